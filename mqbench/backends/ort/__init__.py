"""Everything of ONNX Runtime in one folder.

* :mod:`.export`: the QuantSim as QDQ ONNX (and as QLinear operators), its exact qparams written as
  ONNX Runtime's own quantizer writes them;
* :mod:`.runtime`: the ``ort-qdq`` and ``ort-qoperator`` runtimes (sessions, the operators that ran in float);
* :mod:`.integer_sim` and :mod:`.mlas`: ONNX Runtime's integer arithmetic simulated code for code;
* :mod:`.toolkit`: the ``ort`` toolkit, ONNX Runtime's own ``quantize_static`` as a peer quantizer.
"""
