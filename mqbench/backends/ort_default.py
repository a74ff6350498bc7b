"""``ort-default``: the peer row of what a user would do without mqbench on ONNX Runtime.

The float model is exported to ONNX (the same exporter as ``ort-qdq``), pre-processed with
``onnxruntime.quantization.shape_inference.quant_pre_process`` (symbolic shape inference and graph
optimisation: ONNX Runtime's recommended first step) and quantized by ONNX Runtime's own
``quantize_static``: QDQ format, uint8 asymmetric activations, int8 symmetric weights, per-channel
weights for ``-pc`` schemes (per-tensor for ``-pt``), ``reduce_range=False`` (this machine's class of
CPU: VNNI), with its calibration on the cell's calibration images. The pipeline names the
calibration: ``minmax`` (``CalibrationMethod.MinMax``) or ``entropy`` (``CalibrationMethod.Entropy``,
KL divergence over histograms). Calibration runs batch by batch (``CalibStridedMinMax`` with a stride
of one batch) so its memory does not grow with the number of images. The whole of it (export,
pre-processing, calibration, writing the model) is the cell's ``calibrate:ort-default`` time.

Nothing of mqbench's QuantSim is involved, so the row has no simulated accuracy and no agreement.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
from torch import nn

from mqbench import hookimpl
from mqbench.backends import Backend, Deployed
from mqbench.backends.ort_int8 import OnnxModel, OnnxRuntimeBackend, export_onnx
from mqbench.data import Split
from mqbench.progress import Reporter
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme

METHODS = {"minmax": "MinMax", "entropy": "Entropy"}  # pipeline name -> onnxruntime CalibrationMethod member
CALIBRATIONS = {name: f"CalibrationMethod.{member}" for name, member in METHODS.items()}
CALIB_BATCH = 32


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a calibration split, one batch per item,
    with the ``set_range`` that ``CalibStridedMinMax`` uses."""

    def __init__(self, calib: Split, reporter: Reporter, label: str) -> None:
        self.batches = [x.numpy() for x, _ in calib.batches(CALIB_BATCH)]
        self.start, self.end = 0, len(self.batches)
        self._iter: Any = None
        self._progress = reporter.track(range(len(self.batches)), label, total=len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, end_index
        self._iter = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = iter(self.batches[self.start:self.end])
        batch = next(self._iter, None)
        if batch is None:
            return None
        next(self._progress, None)
        return {"input": batch}

    def close(self) -> None:
        for _ in self._progress:  # finishes (removes) the progress bar
            pass

    def rewind(self) -> None:
        self._iter = None


def quantize_with_ort(model: nn.Module, scheme: QuantScheme, calib: Split, calibration: str,
                      reporter: Reporter) -> Any:
    """The float ``model`` quantized by ``onnxruntime.quantization.quantize_static`` (module docstring),
    as an ONNX ``ModelProto``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    example = calib.normalize(calib.images[:1])
    with tempfile.TemporaryDirectory(prefix="mqbench-ort-default.") as tmp:
        float_path, pre_path, out_path = (os.path.join(tmp, f) for f in ("float.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(export_onnx(model.eval(), example), float_path)
        quant_pre_process(float_path, pre_path)
        reader = _Reader(calib, reporter, f"calibrating (ONNX Runtime, {calibration})")
        try:
            quantize_static(pre_path, out_path, reader, quant_format=QuantFormat.QDQ,
                            per_channel=scheme.weight_granularity == "channel", reduce_range=False,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod[METHODS[calibration]],
                            extra_options={"CalibStridedMinMax": 1})
        finally:
            reader.close()
        return onnx.load(out_path)


class OrtDefault(OnnxRuntimeBackend):
    name = "ort-default"
    description = "peer row: ONNX Runtime's own quantize_static (QDQ, MinMax or Entropy calibration), no QuantSim"
    calibrates_itself = True
    calibrations = CALIBRATIONS

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        if scheme.weight_bits != 8 or scheme.act_bits != 8 or scheme.first_last_bits is not None:
            return "ONNX Runtime's quantize_static writes 8-bit weights and activations (a w8a8 scheme)"
        if scheme.act_symmetric or not scheme.weight_symmetric or scheme.power_of_two or scheme.reduce_range:
            return ("the peer row is ONNX Runtime's recommended x86 setting: uint8 asymmetric activations, int8 "
                    "symmetric weights, no power-of-two scales, no reduce_range (w8a8-pc or w8a8-pt)")
        return None

    def quantize(self, model: nn.Module, scheme: QuantScheme, calib: Split, pipeline: str,
                 reporter: Reporter) -> Deployed:
        quantized = quantize_with_ort(model, scheme, calib, pipeline, reporter)
        return OnnxModel(lambda example: quantized, self.threads)  # built already, dynamic batch size

    def info(self) -> dict[str, Any]:
        info = super().info()
        if info.get("unavailable"):
            return info
        return {**info, "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                "activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": False}


@hookimpl
def mqbench_register_backends(register: Registry[Backend]) -> None:
    register(OrtDefault())
