"""The QuantSim as ONNX: QDQ form (``export_qdq``) and QLinear operators (``to_qoperator``).

Export (:func:`export_qdq`): the QuantSim in inference mode computes every fake-quantizer with
``torch.fake_quantize_per_{tensor,channel}_affine``, which torch's TorchScript ONNX exporter writes as
``QuantizeLinear -> DequantizeLinear`` pairs carrying the QuantSim's exact scales and zero points.
The graph is then finished the way ONNX Runtime's own quantizer writes it (``onnxruntime.quantization``,
QDQ format), so its graph optimizer can fuse each ``DQ -> op -> Q`` group into one integer kernel
(``QLinearConv``, ``QGemm``, ``QLinearAdd``, ``QLinearGlobalAveragePool``):

* weights are stored as int8 codes feeding a ``DequantizeLinear`` (computed with the QuantSim's own
  quantize function, so on-grid weights, AdaRound's for example, keep exactly their codes; nothing is
  recalibrated);
* biases are stored as int32 codes at scale ``input_scale * weight_scale`` (zero point 0), as integer
  runtimes accumulate them; the QuantSim keeps float biases, an error below half a unit of that
  accumulator scale;
* pass-through ops between a ``DequantizeLinear`` and the op it feeds (``Flatten`` before the
  classifier, the zero ``Pad`` of TensorFlow "SAME" padding) run on the integer tensor, the
  ``DequantizeLinear`` moved after them (a ``Pad`` then pads with the zero point, the image of 0).

:func:`to_qoperator` writes the same graph as QLinear operators: ONNX Runtime's graph optimizer fuses each
group (extended level) and the fused graph is saved and checked to hold only QLinear operators between the
input's ``QuantizeLinear`` and the logits' ``DequantizeLinear``.

The torch ONNX exporter used is the TorchScript one (``dynamo=False``): the torch.export-based exporter is the
default since torch 2.9 but needs ``onnxscript``; the QDQ graph is the same. QDQ ONNX is the common currency
of runtimes and toolkits (format ``onnx-qdq``): other runtimes that read ONNX (OpenVINO) take this export too.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import nn

from mqbench.errors import UnsupportedArtifact
from mqbench.quant import functional as Q
from mqbench.quant.qsim import QuantSim

INTEGER_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "QLinearGlobalAveragePool",
                         "QLinearAveragePool", "QLinearConcat", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
                         "MatMulInteger", "ConvInteger"})
# Operators that do arithmetic: one of these left in float means the integer kernels were not used there.
COMPUTE_OPS = frozenset({"Conv", "Gemm", "MatMul", "Add", "GlobalAveragePool", "AveragePool", "Mul", "FusedConv",
                         "FusedGemm", "FusedMatMul"})
OPSET = 17
PASS_THROUGH_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Pad"})


def export_onnx(module: nn.Module, example: torch.Tensor) -> Any:
    """``module`` as an ONNX ``ModelProto`` (input ``input``, output ``logits``, dynamic batch size)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(module, (example,), path, opset_version=OPSET, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        return onnx.load(path)


def export_qdq(qsim: QuantSim, example: torch.Tensor) -> Any:
    """The calibrated ``qsim`` as a QDQ ONNX model with int8 weights and int32 biases (module docstring)."""
    was_training = qsim.training
    qsim.eval()
    try:
        model = export_onnx(qsim, example)
    finally:
        qsim.train(was_training)
    graph = _Graph(model)
    graph.store_weights_as_codes()
    graph.move_dequantize_past_pass_through_ops()  # first, so a padded conv's bias finds its input's scale
    graph.quantize_biases()
    graph.clip_channels_on_codes()
    graph.finish()
    return model


def signed_activations(model: Any) -> Any:
    """A copy of a QDQ model (:func:`export_qdq`) with its uint8 activations held as int8 (ONNX Runtime's S8S8
    kernels): every uint8 constant (activation zero points, a ``Pad`` value that is a zero point, a ``Min``'s bound
    codes) becomes the int8 ``value - 128``. ``s * (q - z) = s * ((q - 128) - (z - 128))``: the same real values,
    and zero padding and code clips shift with the codes. Weights (int8) and biases (int32) are unchanged."""
    import onnx
    from onnx import TensorProto, numpy_helper

    signed = onnx.ModelProto()
    signed.CopyFrom(model)

    def shifted(tensor: Any) -> Any:
        return numpy_helper.from_array((numpy_helper.to_array(tensor).astype(np.int16) - 128).astype(np.int8),
                                       tensor.name)

    graph = signed.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.UINT8:
            graph.initializer[i].CopyFrom(shifted(init))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == TensorProto.UINT8:
                attr.t.CopyFrom(shifted(attr.t))
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.type.tensor_type.elem_type == TensorProto.UINT8:
            info.type.tensor_type.elem_type = TensorProto.INT8
    return signed


class _Graph:
    """In-place rewrites of an exported QDQ graph."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        for node in self.graph.node:  # the exporter shares equal constants through Identity nodes
            if node.op_type == "Identity" and node.input[0] in self.consts:
                self.consts[node.output[0]] = self.consts[node.input[0]]
        self.dropped: set[str] = set()  # output names of removed nodes
        self.new_inits: dict[str, np.ndarray] = {}

    def producer(self, name: str) -> Any:
        for node in self.graph.node:
            if name in node.output and node.output[0] not in self.dropped:
                return node
        return None

    def consumers(self, name: str) -> list[Any]:
        return [n for n in self.graph.node if name in n.input and n.output[0] not in self.dropped]

    def const(self, name: str) -> np.ndarray | None:
        return self.new_inits.get(name, self.consts.get(name))

    def add_init(self, name: str, array: np.ndarray) -> str:
        self.new_inits[name] = array
        return name

    def store_weights_as_codes(self) -> None:
        """``W (float) -> QuantizeLinear -> DQ`` becomes ``codes (int8) -> DQ``."""
        for node in list(self.graph.node):
            if node.op_type != "QuantizeLinear":
                continue
            weight = self.const(node.input[0])
            if weight is None:
                continue
            scale, zero = self.const(node.input[1]), self.const(node.input[2])
            assert scale is not None and zero is not None
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.ndim == 1 else None
            info = np.iinfo(zero.dtype)
            codes = Q.quantize(torch.tensor(weight), torch.tensor(scale), torch.tensor(zero.astype(np.int64)),
                               qmin=int(info.min), qmax=int(info.max), axis=axis)
            name = self.add_init(node.input[0] + "_quantized", codes.numpy().astype(zero.dtype))
            for user in self.consumers(node.output[0]):
                user.input[0] = name
            self.dropped.add(node.output[0])

    def _dq_scale(self, name: str) -> np.ndarray | None:
        node = self.producer(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        return self.const(node.input[1])

    def quantize_biases(self) -> None:
        """A float bias of a Conv or Gemm fed by two DQ nodes becomes ``int32 codes -> DQ``."""
        from onnx import helper

        for node in list(self.graph.node):
            if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
                continue
            bias = self.const(node.input[2])
            x_scale, w_scale = self._dq_scale(node.input[0]), self._dq_scale(node.input[1])
            if bias is None or x_scale is None or w_scale is None:
                continue
            scale = (x_scale.astype(np.float32) * w_scale.astype(np.float32)).astype(np.float32)
            scale = np.broadcast_to(scale, bias.shape).astype(np.float32) if scale.ndim else scale
            codes = np.clip(np.round(bias.astype(np.float64) / scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
            base = f"{node.name or node.output[0]}_bias"
            inputs = [self.add_init(base + "_quantized", codes), self.add_init(base + "_scale", scale),
                      self.add_init(base + "_zero_point", np.zeros(scale.shape, np.int32))]
            dq = helper.make_node("DequantizeLinear", inputs, [base + "_dequantized"], name=base + "_DequantizeLinear")
            if scale.ndim:
                dq.attribute.append(helper.make_attribute("axis", 0))
            self.graph.node.append(dq)
            node.input[2] = base + "_dequantized"

    def move_dequantize_past_pass_through_ops(self) -> None:
        """``DQ -> Flatten/Reshape/Pad -> op`` becomes ``Flatten/Reshape/Pad -> DQ -> op`` (per-tensor DQ), so
        the pass-through op runs on the integer tensor and ``op`` sees a DQ input it can fuse with. A zero
        ``Pad`` (TensorFlow "SAME" padding) then pads with the zero point, the integer image of 0."""
        for node in list(self.graph.node):
            if node.op_type not in PASS_THROUGH_OPS or node.output[0] in self.dropped:
                continue
            dq = self.producer(node.input[0])
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            scale, zero = self.const(dq.input[1]), self.const(dq.input[2])
            if scale is None or zero is None or scale.ndim != 0:
                continue
            if len(self.consumers(dq.output[0])) > 1:  # a tensor also read elsewhere (a residual): own DQ copy
                from onnx import helper

                copy = helper.make_node("DequantizeLinear", list(dq.input), [node.output[0] + "_dq_input"],
                                        name=f"{dq.name}_for_{node.name or node.output[0]}")
                self.graph.node.append(copy)  # protobuf appends a copy: edit the graph's own node below
                node.input[0], dq = copy.output[0], self.graph.node[-1]
            if node.op_type == "Pad":
                mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
                value = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
                if mode != "constant" or value is None or float(np.asarray(value).reshape(-1)[0]) != 0.0:
                    continue
                pad_value = self.add_init(node.output[0] + "_zero_point", zero.reshape(()).copy())
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2] = pad_value
            integer, out = dq.input[0], node.output[0]
            node.input[0], node.output[0] = integer, out + "_quantized"
            dq.input[0], dq.output[0] = out + "_quantized", out

    def clip_channels_on_codes(self) -> None:
        """``Relu -> Min(x, per-channel bound) -> Q`` (ReLU6 after cross-layer equalization) becomes
        ``Relu -> Q -> Min(codes, bound codes)``: ONNX Runtime cannot fuse a per-channel clip into QLinearConv
        and would run the convolution in float; on codes the clip is exact, since rounding is monotone
        (``Q(min(x, u)) = min(Q(x), Q(u))``), and ``Min`` runs on uint8."""
        from onnx import helper

        for q in list(self.graph.node):
            if q.op_type != "QuantizeLinear":
                continue
            node = self.producer(q.input[0])
            if node is None or node.op_type != "Min" or len(node.input) != 2 or len(self.consumers(node.output[0])) != 1:
                continue
            bounds = [self.const(name) for name in node.input]
            if (bounds[0] is None) == (bounds[1] is None):
                continue
            bound, dynamic = (bounds[1], node.input[0]) if bounds[0] is None else (bounds[0], node.input[1])
            scale, zero = self.const(q.input[1]), self.const(q.input[2])
            if scale is None or zero is None or scale.ndim != 0 or bound is None:
                continue
            info = np.iinfo(zero.dtype)
            codes = np.clip(np.round(bound.astype(np.float32) / scale.astype(np.float32)) + int(zero), info.min, info.max)
            out = q.output[0]
            q.input[0], q.output[0] = dynamic, out + "_unclipped"
            name = self.add_init(node.output[0] + "_codes", codes.astype(zero.dtype))
            self.graph.node.append(helper.make_node("Min", [out + "_unclipped", name], [out], name=node.name + "_codes"))
            self.dropped.add(node.output[0])

    def finish(self) -> None:
        from onnx import numpy_helper

        kept = [n for n in self.graph.node if n.output[0] not in self.dropped]
        del self.graph.node[:]
        self.graph.node.extend(kept)
        for name, array in self.new_inits.items():
            self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        while True:  # constants (and Identity copies of them) nothing reads any more
            outputs = {o.name for o in self.graph.output}
            used = {name for node in self.graph.node for name in node.input} | outputs
            dead = [n for n in self.graph.node if n.op_type in ("Constant", "Identity") and n.output[0] not in used]
            if not dead:
                break
            for n in dead:
                self.graph.node.remove(n)
        for init in [i for i in self.graph.initializer if i.name not in used]:
            self.graph.initializer.remove(init)
        _topological_sort(self.graph)


QOPERATOR_BOUNDARY = {"QuantizeLinear": 1, "DequantizeLinear": 1}  # the input's Q and the logits' DQ


def to_qoperator(qdq_model: Any) -> Any:
    """The QDQ model in QOperator form: every ``DQ -> op -> Q`` group one QLinear operator (``QLinearConv``,
    ``QLinearAdd``, ``QGemm``, ``QLinearGlobalAveragePool``) with the same scales, zero points and integer
    weights and biases, as ONNX Runtime's own graph optimizer fuses them (extended level, saved before the
    CPU-specific layout changes). Raises UnsupportedArtifact (a ValueError) naming any operator that was not
    turned into a QLinear
    one (a float operator or a Q/DQ pair left inside the graph)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "qoperator.onnx")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = path
        options.log_severity_level = 3
        ort.InferenceSession(qdq_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        model = onnx.load(path)
    ops = Counter(node.op_type for node in model.graph.node)
    left = {op: n for op, n in ops.items() if op in COMPUTE_OPS or n > QOPERATOR_BOUNDARY.get(op, n)}
    if left:
        nodes = sorted((n for n in model.graph.node if n.op_type in left), key=lambda n: n.op_type not in COMPUTE_OPS)
        names = [f"{node.op_type} {node.name}".strip() for node in nodes][:5]  # float arithmetic first
        raise UnsupportedArtifact(f"the QDQ graph has operators ONNX Runtime could not turn into QLinear operators: "
                         f"{', '.join(names)}")
    return model


def _topological_sort(graph: Any) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes, ordered = list(graph.node), []
    while nodes:
        ready = [n for n in nodes if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"the exported graph has a cycle or a missing input near {nodes[0].op_type} {nodes[0].name}")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        nodes = [n for n in nodes if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


__all__ = ["COMPUTE_OPS", "INTEGER_OPS", "OPSET", "export_onnx", "export_qdq", "signed_activations", "to_qoperator"]
