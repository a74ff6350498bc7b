"""The ``pt2e`` toolkit: PyTorch 2 Export quantization (torchao's ``prepare_pt2e`` / ``convert_pt2e``) with the
quantizer each runtime's owners ship, at its defaults, as peer rows.

The flow every PT2E tutorial gives (https://docs.pytorch.org/ao/stable/tutorials_source/pt2e_quant_ptq.html):
the float model captured by ``torch.export.export`` (batch dimension dynamic, so the result runs at any batch),
``prepare_pt2e(model, quantizer)`` inserting the quantizer's observers, the calibration images run through it in
batches, ``convert_pt2e`` writing ``quantize -> dequantize`` pairs. The recipes differ by quantizer:

* ``pt2e:x86_inductor``: torchao's ``X86InductorQuantizer`` with ``get_default_x86_inductor_quantization_config()``
  (HistogramObserver uint8 asymmetric activations, per-channel symmetric int8 weights; it has no per-tensor
  weights, so w8a8-pc only); deployed by ``torchao-x86`` (torch.compile, Inductor's oneDNN int8 kernels);
* ``pt2e:xnnpack``: ExecuTorch's ``XNNPACKQuantizer`` with ``get_symmetric_quantization_config(is_per_channel=...)``
  (HistogramObserver int8 asymmetric activations, symmetric int8 weights, per channel or per tensor as the scheme
  says); deployed by ``executorch-xnnpack``;
* ``pt2e:litert``: litert-torch's ``PT2EQuantizer`` with its ``get_symmetric_quantization_config(is_per_channel=...)``
  and ``convert_pt2e(..., fold_quantize=False)``, litert-torch's documented flow; deployed by ``litert-xnnpack``
  (converted to an int8 ``.tflite`` in its static PT2E mode).

Each recipe writes its own artifact format (``pt2e[<quantizer>]``: a converted ``torch.fx.GraphModule``), run by the
runtime its quantizer was made for; the runtime's record says what ran in int8 and what in float, as for mqbench's
own rows. Nothing of mqbench's QuantSim is involved; the row's ``sim`` is the converted graph run by PyTorch (the PT2E
flow's reference: decomposed quantize/dequantize ops around float operators), and its agreement says how faithfully
the runtime's compiler kept it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends import Artifact
from mqbench.backends.pt2e import PT2E_LITERT, PT2E_X86_INDUCTOR, PT2E_XNNPACK, quiet
from mqbench.data import Split
from mqbench.progress import Reporter
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme
from mqbench.toolkits import Recipe, RecipeConfig, Toolkit, module_simulation, w8a8_problem

CALIB_BATCH = 32
DOCS = "https://docs.pytorch.org/ao/stable/tutorials_source/pt2e_quant_ptq.html"


@dataclass(frozen=True)
class Pt2eRecipe(RecipeConfig):
    """Which PT2E quantizer annotates the graph; the scheme chooses per-channel or per-tensor weights."""

    quantizer: str = "x86_inductor"  # x86_inductor | xnnpack | litert
    calib_batch: int = CALIB_BATCH

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {', '.join(QUANTIZERS)}, got {self.quantizer!r}")
        if self.calib_batch < 1:
            raise ValueError(f"calib_batch must be at least 1, got {self.calib_batch}")


def _x86_inductor(per_channel: bool) -> Any:
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    return xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())


def _xnnpack(per_channel: bool) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))


def _litert(per_channel: bool) -> Any:
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))


# quantizer -> (constructor(per_channel), the package that ships it, convert_pt2e's fold_quantize)
QUANTIZERS: dict[str, tuple[Callable[[bool], Any], str, bool]] = {
    "x86_inductor": (_x86_inductor, "torchao", True),
    "xnnpack": (_xnnpack, "executorch", True),
    "litert": (_litert, "litert_torch", False),
}


def quantize_with_pt2e(model: nn.Module, scheme: QuantScheme, calib: Split, recipe: Pt2eRecipe,
                       reporter: Reporter) -> torch.fx.GraphModule:
    """The float ``model`` captured, prepared with the recipe's quantizer, calibrated on ``calib`` and converted."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    make, _, fold = QUANTIZERS[recipe.quantizer]
    example = calib.normalize(calib.images[:min(len(calib), recipe.calib_batch)])
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with quiet():
        captured = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},)).module()
        prepared = prepare_pt2e(captured, make(scheme.weight_granularity == "channel"))
    with torch.no_grad():
        for x, _ in reporter.track(calib.batches(recipe.calib_batch), f"calibrating (PT2E, {recipe.quantizer})",
                                   total=-(-len(calib) // recipe.calib_batch)):
            prepared(x)
    with quiet():
        converted = convert_pt2e(prepared, fold_quantize=fold)
    # runtimes call .eval() on what they deploy (litert_torch.convert does); torchao's documented switch makes that
    # a no-op-safe call on an exported graph instead of an error
    return allow_exported_model_train_eval(converted)


class Pt2eToolkit(Toolkit):
    name = "pt2e"
    description = "PyTorch 2 Export quantization (torchao prepare_pt2e/convert_pt2e) with each runtime's own quantizer"
    output_format = PT2E_X86_INDUCTOR  # of the first recipe; each recipe names its own
    packages: ClassVar[tuple[str, ...]] = ("torchao", "executorch", "litert-torch")
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "x86_inductor": Recipe("x86_inductor", f"torchao's X86InductorQuantizer at its default config ({DOCS})",
                               Pt2eRecipe("x86_inductor"), PT2E_X86_INDUCTOR),
        "xnnpack": Recipe("xnnpack", "ExecuTorch's XNNPACKQuantizer, get_symmetric_quantization_config (static)",
                          Pt2eRecipe("xnnpack"), PT2E_XNNPACK),
        "litert": Recipe("litert", "litert-torch's PT2EQuantizer, get_symmetric_quantization_config (static), "
                         "convert_pt2e(fold_quantize=False)", Pt2eRecipe("litert"), PT2E_LITERT),
    }

    def unavailable(self) -> str | None:
        try:
            import torchao  # noqa: F401
        except ImportError:
            return "torchao is not installed (pip install 'mqbench[torchao]')"
        return None

    def make_config(self, recipe: str, overrides: dict[str, Any]) -> RecipeConfig:
        if "quantizer" in overrides and overrides["quantizer"] != recipe:
            raise ValueError(f"the recipe names the quantizer: write pt2e:{overrides['quantizer']}, not "
                             f"pt2e:{recipe}(quantizer={overrides['quantizer']})")
        return super().make_config(recipe, overrides)

    def _missing(self, config: Pt2eRecipe) -> str | None:
        package = QUANTIZERS[config.quantizer][1]
        try:
            __import__(package)
        except ImportError:
            extra = {"torchao": "torchao", "executorch": "executorch", "litert_torch": "litert"}[package]
            return f"{package} is not installed (pip install 'mqbench[{extra}]')"
        return None

    def check_scheme(self, scheme: QuantScheme, config: RecipeConfig) -> str | None:
        assert isinstance(config, Pt2eRecipe)
        missing = self._missing(config)
        if missing:
            return missing
        problem = w8a8_problem(scheme, "the PT2E quantizers' static configs are 8-bit",
                               "the PT2E quantizers' defaults: asymmetric activations, symmetric weights")
        if problem:
            return problem
        if config.quantizer == "x86_inductor" and scheme.weight_granularity != "channel":
            return "X86InductorQuantizer annotates per-channel weights only (w8a8-pc)"
        return None

    def quantize(self, model: nn.Module, scheme: QuantScheme, calib: Split, config: RecipeConfig,
                 reporter: Reporter) -> Artifact:
        assert isinstance(config, Pt2eRecipe)
        module = quantize_with_pt2e(model, scheme, calib, config, reporter)
        ops = [n.target for n in module.graph.nodes if n.op == "call_function"]
        counts = {name: sum(1 for t in ops if getattr(t, "__name__", "").startswith(name))
                  for name in ("quantize_per_tensor", "dequantize_per_tensor", "dequantize_per_channel")}
        return Artifact(self.format_of(config.quantizer), module,
                        {"tool": "torchao prepare_pt2e/convert_pt2e", "quantizer": config.quantizer,
                         "per_channel_weights": scheme.weight_granularity == "channel", "qdq_ops": counts,
                         "simulation": "the converted graph run by PyTorch (decomposed quantize/dequantize ops)"},
                        simulation=module_simulation(module))

    def info(self) -> dict[str, Any]:
        missing = self.unavailable()
        if missing:
            return {"unavailable": missing}
        import torchao

        return {"toolkit": f"torchao {torchao.__version__}", "tool": "prepare_pt2e/convert_pt2e",
                "capture": "torch.export.export, dynamic batch"}


@hookimpl
def mqbench_register_toolkits(register: Registry[Toolkit]) -> None:
    register(Pt2eToolkit())
