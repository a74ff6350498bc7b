"""The ``brevitas`` toolkit: AMD/Xilinx Brevitas's post-training quantization flow, exported as QCDQ ONNX, a peer row.

Brevitas's ImageNet PTQ example (``brevitas_examples.imagenet_classification.ptq``: ``ptq_evaluate.py`` and its
``ptq_common`` helpers, used here as that script uses them) on the float model:

1. ``preprocess_for_quantize``: the model traced by ``torch.fx``, batch norms merged, **graph equalization**
   (cross-layer equalization, ``equalize_iters`` iterations, biases merged);
2. ``quantize_model`` with the ``fx`` backend (every activation quantized: a fully integer graph), 8-bit weights
   per channel (``-pc``) or per tensor (``-pt``), 8-bit activations (unsigned where they cannot be negative),
   32-bit biases, activation ranges from the ``act_quant_percentile`` percentile of their statistics;
3. ``calibrate`` (the calibration images through the model in calibration mode), then ``apply_bias_correction``;
4. ``export_onnx_qcdq`` (TorchScript exporter: ``dynamo=False``, as Brevitas's quantized bias needs), batch
   dimension dynamic.

The recipes are two rows of Brevitas's own benchmark (``RESULTS_TORCHVISION.csv`` shipped with the package, MobileNetV2
W8A8 with the fully quantized backend, 1000 calibration images, torchvision's float 71.898): ``brevitas:ptq`` is the
best of them (po2 scales, per-channel weights, symmetric activations, bias correction, 20 equalization iterations,
percentile 99.9: 71.312), ``brevitas:float_scale`` the same with float scales (the script's default scale type).

mqbench's models hold TensorFlow "SAME" convolutions whose padding depends on the input size, which ``torch.fx``
cannot trace: they become a fixed ``ZeroPad2d`` and a plain convolution first (what a user does for Brevitas).
The QCDQ file (QuantizeLinear, Clip, DequantizeLinear) is artifact ``onnx-qdq``, deployed on ``ort-qdq`` and
``openvino``. The row's ``sim`` is Brevitas's own quantized model run by PyTorch (its fake-quant simulation).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends import ONNX_QDQ, Artifact
from mqbench.data import Split
from mqbench.progress import Reporter
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme
from mqbench.toolkits import Recipe, RecipeConfig, Toolkit, module_simulation, w8a8_problem

CSV = "brevitas_examples/imagenet_classification/ptq/RESULTS_TORCHVISION.csv"


@dataclass(frozen=True)
class BrevitasRecipe(RecipeConfig):
    """The PTQ example's arguments a recipe chooses (the scheme chooses per-channel or per-tensor weights)."""

    scale_factor_type: str = "po2_scale"  # or float_scale
    act_quant_type: str = "sym"  # or asym
    act_quant_percentile: float = 99.9
    equalize_iters: int = 20
    equalize_merge_bias: bool = True
    bias_correction: bool = True
    calib_batch: int = 32

    def __post_init__(self) -> None:
        if self.scale_factor_type not in ("po2_scale", "float_scale"):
            raise ValueError(f"scale_factor_type must be po2_scale or float_scale, got {self.scale_factor_type!r}")
        if self.act_quant_type not in ("sym", "asym"):
            raise ValueError(f"act_quant_type must be sym or asym, got {self.act_quant_type!r}")
        if not 50.0 < self.act_quant_percentile <= 100.0:
            raise ValueError(f"act_quant_percentile must be in (50, 100], got {self.act_quant_percentile}")
        if self.equalize_iters < 0 or self.calib_batch < 1:
            raise ValueError("equalize_iters must be >= 0 and calib_batch >= 1")


@contextmanager
def _quiet() -> Iterator[None]:
    """Brevitas's tracer and exporter warn on every layer; its helpers print tqdm bars (mqbench reports progress)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ.setdefault("TQDM_DISABLE", "1")
        yield


def _loader(calib: Split, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The calibration images as the PTQ helpers iterate them: (images, labels) batches."""
    return [(x, y) for x, y in calib.batches(batch)]


def quantize_with_brevitas(model: nn.Module, scheme: QuantScheme, calib: Split, recipe: BrevitasRecipe,
                           reporter: Reporter) -> nn.Module:
    """The float ``model`` through Brevitas's PTQ flow (module docstring, steps 1-3): its quantized model."""
    from brevitas.graph.quantize import preprocess_for_quantize
    from brevitas_examples.imagenet_classification.ptq.ptq_common import (
        apply_bias_correction,
        calibrate,
        quantize_model,
    )

    from mqbench.backends.torch_ao.toolkit import with_static_padding

    example = calib.normalize(calib.images[:1])
    loader = _loader(calib, recipe.calib_batch)
    with _quiet():
        reporter.log(f"Brevitas: graph equalization ({recipe.equalize_iters} iterations)")
        model = preprocess_for_quantize(with_static_padding(model, example), equalize_iters=recipe.equalize_iters,
                                        equalize_merge_bias=recipe.equalize_merge_bias, merge_bn=True)
        quant = quantize_model(model, backend="fx", weight_bit_width=8, act_bit_width=8, bias_bit_width=32,
                               weight_quant_granularity="per_channel" if scheme.weight_granularity == "channel"
                               else "per_tensor", act_quant_percentile=recipe.act_quant_percentile,
                               act_quant_type=recipe.act_quant_type, scale_factor_type=recipe.scale_factor_type,
                               quant_format="int")
        quant.eval()
        with torch.no_grad():
            quant(loader[0][0])  # the forward pass some quantizers need before calibration (as ptq_evaluate does)
        reporter.log(f"Brevitas: calibrating on {len(calib)} images")
        calibrate(loader, quant)
        if recipe.bias_correction:
            reporter.log("Brevitas: bias correction")
            apply_bias_correction(loader, quant)
    return quant.eval()


def export_qcdq(quant: nn.Module, example: torch.Tensor) -> Any:
    """Brevitas's quantized model exported as QCDQ ONNX (TorchScript exporter, dynamic batch): a ``ModelProto``."""
    import onnx
    from brevitas.export import export_onnx_qcdq

    with tempfile.TemporaryDirectory(prefix="mqbench-brevitas.") as tmp, _quiet():
        path = os.path.join(tmp, "qcdq.onnx")
        export_onnx_qcdq(quant, example, export_path=path, dynamo=False, opset_version=17, input_names=["input"],
                         output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        return onnx.load(path)


class BrevitasToolkit(Toolkit):
    name = "brevitas"
    description = "AMD Brevitas's PTQ flow (graph equalization, percentile ranges, bias correction), QCDQ ONNX"
    output_format = ONNX_QDQ
    packages: ClassVar[tuple[str, ...]] = ("brevitas",)
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "ptq": Recipe("ptq", f"the best fully quantized W8A8 MobileNetV2 row of Brevitas's benchmark ({CSV}): po2 "
                      "scales, sym activations, percentile 99.9, 20 equalization iterations, bias correction",
                      BrevitasRecipe()),
        "float_scale": Recipe("float_scale", "the same with float scales (ptq_evaluate.py's default scale type)",
                              BrevitasRecipe(scale_factor_type="float_scale")),
    }

    def unavailable(self) -> str | None:
        try:
            import brevitas  # noqa: F401
            import brevitas_examples  # noqa: F401
            import onnx  # noqa: F401
            import onnxoptimizer  # noqa: F401  brevitas's exporter imports it without declaring it
        except ImportError as exc:
            return f"{exc.name} is not installed (pip install 'mqbench[brevitas]')"
        return None

    def check_scheme(self, scheme: QuantScheme, config: RecipeConfig) -> str | None:
        return w8a8_problem(scheme, "the Brevitas rows are its 8-bit recipe", "the recipe chooses the activations' mode "
                            "and the scale type; the scheme names the weights' granularity only")

    def quantize(self, model: nn.Module, scheme: QuantScheme, calib: Split, config: RecipeConfig,
                 reporter: Reporter) -> Artifact:
        assert isinstance(config, BrevitasRecipe)
        quant = quantize_with_brevitas(model, scheme, calib, config, reporter)
        proto = export_qcdq(quant, calib.normalize(calib.images[:1]))
        from mqbench.toolkits.nncf import qdq_summary

        return Artifact(ONNX_QDQ, proto, {"tool": "brevitas_examples ptq_common + export_onnx_qcdq", "backend": "fx",
                                          "per_channel_weights": scheme.weight_granularity == "channel",
                                          "simulation": "Brevitas's quantized model run by PyTorch",
                                          **qdq_summary(proto)}, simulation=module_simulation(quant))

    def info(self) -> dict[str, Any]:
        missing = self.unavailable()
        if missing:
            return {"unavailable": missing}
        import brevitas

        return {"toolkit": f"brevitas {brevitas.__version__}", "tool": "ptq_common.quantize_model (fx backend)",
                "export": "export_onnx_qcdq, dynamo=False"}


@hookimpl
def mqbench_register_toolkits(register: Registry[Toolkit]) -> None:
    register(BrevitasToolkit())
