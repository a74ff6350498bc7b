"""The ``nncf`` toolkit: Intel's NNCF post-training quantization (``nncf.quantize``) on the ONNX model, as a peer row.

What NNCF's documentation recommends for a CNN (https://docs.openvino.ai/2025/openvino-workflow/model-optimization-guide/
quantizing-models-post-training/basic-quantization-flow.html): ``nncf.quantize(model, nncf.Dataset(...))`` with its
defaults, i.e. ``preset=PERFORMANCE`` (symmetric weights and activations; an activation that cannot be negative, after
a ReLU, is unsigned with zero point 0, the others signed), ``fast_bias_correction=True`` (each layer's bias shifted
by the mean error of its quantized output), per-channel weights, ``target_device=ANY``. The recipes:

* ``nncf:performance``: those defaults;
* ``nncf:mixed``: ``preset=MIXED``, NNCF's choice for models with activations of both signs: asymmetric
  activations, symmetric weights (what mqbench's ``w8a8`` schemes are).

The float model is exported to ONNX (the exporter every mqbench ONNX row uses) and NNCF's ONNX backend quantizes
it: the calibration images are NNCF's dataset, one image per item as its documentation does it
(``subset_size`` = the cell's calibration count, not NNCF's default 300, so every row of a table sees the same
images). A ``-pt`` scheme asks NNCF for per-tensor weights (``AdvancedQuantizationParameters(weights_quantization_
params=QuantizationParameters(per_channel=False))``). The result is a QDQ ONNX model (artifact ``onnx-qdq``),
deployed as it is on ``ort-qdq``, ``ort-qdq-s8s8`` and ``openvino`` (NNCF's own target); each record's
``deployment`` says what the runtime ran in float (ONNX Runtime runs NNCF's convolutions that feed a ``Clip`` in
float: NNCF quantizes the ReLU6's output, not the convolution's, and ONNX Runtime's QDQ selectors want
``DQ -> Conv -> Q``).

Nothing of mqbench's QuantSim is involved. The row's ``sim`` is NNCF's QDQ model as its operators say (ONNX Runtime
with graph optimizations off: each Q/DQ computed, everything else float32), so its agreement measures what a runtime
changes of the file's meaning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import nn

from mqbench import hookimpl
from mqbench.backends import ONNX_QDQ, Artifact
from mqbench.data import Split
from mqbench.progress import Reporter
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme
from mqbench.toolkits import Recipe, RecipeConfig, Toolkit, w8a8_problem

DOCS = ("https://docs.openvino.ai/2025/openvino-workflow/model-optimization-guide/quantizing-models-post-training/"
        "basic-quantization-flow.html")
PRESETS = ("PERFORMANCE", "MIXED")


@dataclass(frozen=True)
class NncfRecipe(RecipeConfig):
    """``nncf.quantize``'s arguments a recipe chooses (the scheme chooses per-channel or per-tensor weights)."""

    preset: str = "PERFORMANCE"  # an nncf.QuantizationPreset member
    fast_bias_correction: bool = True  # NNCF's default; False runs its full BiasCorrection
    subset_size: int = 0  # images NNCF collects statistics on; 0: every calibration image of the cell

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)} (nncf.QuantizationPreset), got {self.preset!r}")
        if self.subset_size < 0:
            raise ValueError(f"subset_size must be 0 (every calibration image) or positive, got {self.subset_size}")


class _Images:
    """NNCF's calibration data source: the calibration images, normalised, one image (a batch of one) per item."""

    def __init__(self, calib: Split) -> None:
        self.calib = calib

    def __len__(self) -> int:
        return len(self.calib)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self.calib)):
            yield self.calib.normalize(self.calib.images[i:i + 1]).numpy()


def quantize_with_nncf(model: nn.Module, scheme: QuantScheme, calib: Split, recipe: NncfRecipe) -> Any:
    """The float ``model`` exported to ONNX and quantized by ``nncf.quantize`` (module docstring): a QDQ ``ModelProto``."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    from mqbench.backends.ort.export import export_onnx

    proto = export_onnx(model.eval(), calib.normalize(calib.images[:1]))
    input_name = proto.graph.input[0].name
    dataset = nncf.Dataset(_Images(calib), lambda image: {input_name: image})
    advanced = None
    if scheme.weight_granularity == "tensor":
        advanced = AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=False))
    return nncf.quantize(proto, dataset, preset=nncf.QuantizationPreset[recipe.preset],
                         subset_size=recipe.subset_size or len(calib),
                         fast_bias_correction=recipe.fast_bias_correction, advanced_parameters=advanced)


def qdq_summary(proto: Any) -> dict[str, Any]:
    """What a QDQ model quantizes: QuantizeLinear nodes by zero-point type (int8 or uint8 activations) and the
    DequantizeLinear nodes reading constants (the weights), to record with the artifact."""
    import onnx

    inits = {i.name: i for i in proto.graph.initializer}
    consts = {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    types: Counter[str] = Counter()
    weights = 0
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits:
            types[onnx.TensorProto.DataType.Name(inits[node.input[2]].data_type).lower()] += 1
        elif node.op_type == "DequantizeLinear" and (node.input[0] in inits or node.input[0] in consts):
            weights += 1
    return {"activation_quantizers": dict(sorted(types.items())), "constant_dequantizers": weights}


class NncfToolkit(Toolkit):
    name = "nncf"
    description = "Intel NNCF's nncf.quantize on the ONNX model (fast bias correction, its presets), no QuantSim"
    output_format = ONNX_QDQ
    packages: ClassVar[tuple[str, ...]] = ("nncf",)
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "performance": Recipe("performance", f"nncf.quantize at its defaults: preset PERFORMANCE, fast bias "
                              f"correction ({DOCS})", NncfRecipe("PERFORMANCE")),
        "mixed": Recipe("mixed", "preset MIXED (asymmetric activations, symmetric weights), fast bias correction",
                        NncfRecipe("MIXED")),
    }

    def unavailable(self) -> str | None:
        try:
            import nncf  # noqa: F401
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401  NNCF's ONNX backend collects statistics with it
        except ImportError as exc:
            return f"{exc.name} is not installed (pip install 'mqbench[nncf]')"
        return None

    def check_scheme(self, scheme: QuantScheme, config: RecipeConfig) -> str | None:
        return w8a8_problem(scheme, "the NNCF rows are its 8-bit post-training quantization",
                            "NNCF's preset chooses the activations' mode; the scheme names the weights' granularity only")

    def quantize(self, model: nn.Module, scheme: QuantScheme, calib: Split, config: RecipeConfig,
                 reporter: Reporter) -> Artifact:
        assert isinstance(config, NncfRecipe)
        reporter.log(f"quantizing with NNCF ({config.preset.lower()} preset, {config.subset_size or len(calib)} "
                     "images; NNCF shows its own progress)")
        proto = quantize_with_nncf(model, scheme, calib, config)
        from mqbench.backends.ort.runtime import QdqReference

        return Artifact(ONNX_QDQ, proto, {"tool": "nncf.quantize (ONNX backend)", "preset": config.preset,
                                          "per_channel_weights": scheme.weight_granularity == "channel",
                                          "simulation": "the QDQ model, unfused (ONNX Runtime, optimizations off)",
                                          **qdq_summary(proto)}, simulation=QdqReference(proto))

    def info(self) -> dict[str, Any]:
        missing = self.unavailable()
        if missing:
            return {"unavailable": missing}
        import nncf

        return {"toolkit": f"nncf {nncf.__version__}", "tool": "nncf.quantize", "backend": "ONNX",
                "target_device": "ANY", "dataset": "one image per item"}


@hookimpl
def mqbench_register_toolkits(register: Registry[Toolkit]) -> None:
    register(NncfToolkit())
