"""The ``ort`` toolkit: what a user would do without mqbench on ONNX Runtime, as a peer quantizer.

The float model is exported to ONNX (the same exporter as ``ort-qdq``), pre-processed with
``onnxruntime.quantization.shape_inference.quant_pre_process`` (symbolic shape inference and graph
optimisation: ONNX Runtime's recommended first step) and quantized by ONNX Runtime's own
``quantize_static``: QDQ format, uint8 asymmetric activations, int8 symmetric weights, per-channel
weights for ``-pc`` schemes (per-tensor for ``-pt``), ``reduce_range=False`` (this machine's class of
CPU: VNNI), with its calibration on the cell's calibration images. The recipe names the calibration:
``ort:minmax`` (``CalibrationMethod.MinMax``) or ``ort:entropy`` (``CalibrationMethod.Entropy``, KL divergence
over histograms). The result is a QDQ ONNX model (artifact format ``onnx-qdq``), run by ``ort-qdq``.
Calibration runs batch by batch (``CalibStridedMinMax`` with a stride of one batch) so its memory does not
grow with the number of images. The whole of it (export,
pre-processing, calibration, writing the model) is the cell's ``calibrate:ort`` time. (The first wave
called this row the ``ort-default`` backend; its records are read as ``ort:minmax`` on ``ort-qdq``.)

Nothing of mqbench's QuantSim is involved; the row's ``sim`` is the QDQ model as its operators say (ONNX Runtime
with graph optimizations off), and its agreement measures what the runtime's fusions change.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import nn

from mqbench import hookimpl
from mqbench.backends import ONNX_QDQ, Artifact
from mqbench.backends.ort.export import export_onnx
from mqbench.data import Split
from mqbench.progress import Reporter
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme
from mqbench.toolkits import Recipe, RecipeConfig, Toolkit, w8a8_problem

CALIB_BATCH = 32


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a calibration split, one batch per item,
    with the ``set_range`` that ``CalibStridedMinMax`` uses."""

    def __init__(self, calib: Split, reporter: Reporter, label: str, batch: int) -> None:
        self.batches = [x.numpy() for x, _ in calib.batches(batch)]
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


@dataclass(frozen=True)
class OrtRecipe(RecipeConfig):
    """``quantize_static``'s arguments that a recipe chooses (the scheme chooses per-channel weights)."""

    calibrate_method: str = "MinMax"  # an onnxruntime.quantization.CalibrationMethod member
    calib_batch: int = CALIB_BATCH  # images per calibration batch (CalibStridedMinMax stride: one batch)

    def __post_init__(self) -> None:
        if self.calibrate_method not in ("MinMax", "Entropy", "Percentile", "Distribution"):
            raise ValueError(f"calibrate_method must be a CalibrationMethod member (MinMax, Entropy, Percentile, "
                             f"Distribution), got {self.calibrate_method!r}")
        if self.calib_batch < 1:
            raise ValueError(f"calib_batch must be at least 1, got {self.calib_batch}")


def quantize_with_ort(model: nn.Module, scheme: QuantScheme, calib: Split, recipe: OrtRecipe,
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
        reader = _Reader(calib, reporter, f"calibrating (ONNX Runtime, {recipe.calibrate_method})", recipe.calib_batch)
        try:
            quantize_static(pre_path, out_path, reader, quant_format=QuantFormat.QDQ,
                            per_channel=scheme.weight_granularity == "channel", reduce_range=False,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod[recipe.calibrate_method],
                            extra_options={"CalibStridedMinMax": 1})
        finally:
            reader.close()
        return onnx.load(out_path)


DOCS = "https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html"


class OrtToolkit(Toolkit):
    name = "ort"
    description = "ONNX Runtime's own quantize_static (QDQ, uint8 activations, int8 weights), no QuantSim"
    output_format = ONNX_QDQ
    packages = ("onnxruntime",)
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "minmax": Recipe("minmax", f"CalibrationMethod.MinMax, ONNX Runtime's default ({DOCS})", OrtRecipe("MinMax")),
        "entropy": Recipe("entropy", "CalibrationMethod.Entropy (KL divergence over histograms)", OrtRecipe("Entropy")),
    }

    def unavailable(self) -> str | None:
        try:
            import onnx  # noqa: F401
            import onnxruntime.quantization  # noqa: F401
        except ImportError as exc:
            return f"{exc.name} is not installed (pip install {exc.name})"
        return None

    def check_scheme(self, scheme: QuantScheme, config: RecipeConfig) -> str | None:
        return w8a8_problem(scheme, "ONNX Runtime's quantize_static writes 8-bit weights and activations",
                            "the peer row is ONNX Runtime's recommended x86 setting: uint8 asymmetric activations, int8 "
                            "symmetric weights, no power-of-two scales, no reduce_range")

    def quantize(self, model: nn.Module, scheme: QuantScheme, calib: Split, config: RecipeConfig,
                 reporter: Reporter) -> Artifact:
        assert isinstance(config, OrtRecipe)
        proto = quantize_with_ort(model, scheme, calib, config, reporter)
        from mqbench.backends.ort.runtime import QdqReference

        return Artifact(ONNX_QDQ, proto, {"tool": "onnxruntime.quantization.quantize_static",
                                          "simulation": "the QDQ model, unfused (ONNX Runtime, optimizations off)"},
                        simulation=QdqReference(proto))

    def info(self) -> dict[str, Any]:
        if self.unavailable():
            return {"unavailable": self.unavailable()}
        import onnxruntime as ort

        return {"toolkit": f"onnxruntime {ort.__version__}", "tool": "onnxruntime.quantization.quantize_static",
                "format": "QDQ", "activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": False}


@hookimpl
def mqbench_register_toolkits(register: Registry[Toolkit]) -> None:
    register(OrtToolkit())
