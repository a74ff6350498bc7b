"""The ``torch.ao`` toolkit: what a user would do without mqbench in PyTorch, as a peer quantizer.

torch.ao's FX graph mode post-training quantization with the engine's default qconfig, exactly as its
tutorial does it: ``prepare_fx(model, get_default_qconfig_mapping(engine), example)``, the calibration
images run through the observed model, ``convert_fx``. For the ``x86`` engine (torch's default on x86
CPUs) that is a ``HistogramObserver`` on activations (quint8, ``reduce_range=True``: 7-bit activations,
torch's guard against overflow in the u8 x s8 multiply without VNNI) and a per-channel min/max observer
on weights (qint8 symmetric): scheme ``w8a8-pc-rr``. Scheme ``w8a8-pc`` runs the same observers with
``reduce_range=False`` (the comparison at 8-bit activations; this machine's VNNI kernels do not need the
guard). The recipe names the calibration: ``torch.ao:default`` is torch's default qconfig (HistogramObserver,
which searches the clipping range that minimises the L2 quantization error over its histogram, what
mqbench's ``mse`` does with its own search); ``torch.ao:minmax`` replaces the activation observer by
``MinMaxObserver``, weights unchanged. The result is a torch.ao-converted module with weights packed for
the engine (artifact format ``torch.ao-quantized[x86]``), run by the ``torch-x86`` runtime. (The first wave
called this row the ``torch-default`` backend with pipelines ``mse`` and ``minmax``.)

Nothing of mqbench's QuantSim is involved, so the row has no simulated accuracy and no agreement.
``torch.ao.quantization`` is deprecated upstream (pytorch/pytorch#184982; PT2E with torchao replaces
it): like the torch runtime (``runtime.py`` beside this file), this module keeps every use of it here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends import Artifact
from mqbench.backends.torch_ao.runtime import torch_ao_format
from mqbench.data import Split
from mqbench.layers import Conv2dSame, tf_same_pad
from mqbench.progress import Reporter
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme
from mqbench.toolkits import Recipe, RecipeConfig, Toolkit

ENGINE = "x86"
CALIB_BATCH = 32


@dataclass(frozen=True)
class TorchAoRecipe(RecipeConfig):
    """The activation observer of the engine's default qconfig mapping (weights: the default's)."""

    activation_observer: str = "HistogramObserver"  # or "MinMaxObserver"
    calib_batch: int = CALIB_BATCH

    def __post_init__(self) -> None:
        if self.activation_observer not in ("HistogramObserver", "MinMaxObserver"):
            raise ValueError(f"activation_observer must be HistogramObserver or MinMaxObserver, got "
                             f"{self.activation_observer!r}")
        if self.calib_batch < 1:
            raise ValueError(f"calib_batch must be at least 1, got {self.calib_batch}")


def qconfig_mapping(activation_observer: str, reduce_range: bool) -> Any:
    """The engine's default qconfig mapping, with ``activation_observer`` and ``reduce_range`` as the scheme says
    (the default's is True)."""
    from torch.ao.quantization import HistogramObserver, MinMaxObserver, QConfig, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(ENGINE)
    observer = HistogramObserver if activation_observer == "HistogramObserver" else MinMaxObserver
    if observer is not HistogramObserver or not reduce_range:
        default = mapping.global_qconfig
        assert default is not None
        mapping = mapping.set_global(QConfig(activation=observer.with_args(reduce_range=reduce_range),
                                             weight=default.weight))
    return mapping


def with_static_padding(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose TensorFlow "SAME" convolutions (``Conv2dSame``, padding computed from the input
    size at run time, which torch.ao's tracer cannot trace) are a fixed ``ZeroPad2d`` followed by a plain
    ``Conv2d``, the padding that ``example``'s input size gives: what a user makes of such a model for torch.ao."""
    model = copy.deepcopy(model).eval()
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape)))
             for name, m in model.named_modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    for name, shape in sizes.items():
        same = model.get_submodule(name)
        assert isinstance(same, Conv2dSame)
        probe = torch.zeros(shape[:2] + shape[2:])
        padded = tf_same_pad(probe, same.kernel_size, same.stride, same.dilation)  # type: ignore[arg-type]
        pad_h, pad_w = padded.shape[2] - shape[2], padded.shape[3] - shape[3]
        top, left = pad_h // 2, pad_w // 2  # tf_same_pad puts the odd pixel after
        conv = nn.Conv2d(same.in_channels, same.out_channels, same.kernel_size, same.stride, 0,  # type: ignore[arg-type]
                         same.dilation, same.groups, same.bias is not None)  # type: ignore[arg-type]
        conv.load_state_dict(same.state_dict())
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr,
                nn.Sequential(nn.ZeroPad2d((left, pad_w - left, top, pad_h - top)), conv))
    return model.eval()  # the new modules too (torch.ao fuses conv and BN only when both are in eval mode)


def quantize_with_torch_ao(model: nn.Module, calib: Split, recipe: TorchAoRecipe, reduce_range: bool,
                           reporter: Reporter) -> nn.Module:
    """``model`` quantized by torch.ao's FX post-training flow (module docstring)."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = ENGINE
    example = calib.normalize(calib.images[:1])
    float_model = with_static_padding(model, example)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        prepared = prepare_fx(float_model, qconfig_mapping(recipe.activation_observer, reduce_range), (example,))
        batch = recipe.calib_batch
        for x, _ in reporter.track(calib.batches(batch), f"calibrating (torch.ao, {recipe.activation_observer})",
                                   total=-(-len(calib) // batch)):
            prepared(x)
        return convert_fx(prepared).eval()


class TorchAoToolkit(Toolkit):
    name = "torch.ao"
    description = (f"torch.ao's FX post-training quantization with the {ENGINE} engine's default qconfig "
                   "(HistogramObserver), no QuantSim")
    output_format = torch_ao_format(ENGINE)
    recipes: ClassVar[Mapping[str, Recipe]] = {
        "default": Recipe("default", f"get_default_qconfig_mapping({ENGINE!r}) as torch's PTQ tutorial uses it",
                          TorchAoRecipe("HistogramObserver")),
        "minmax": Recipe("minmax", "the default qconfig with MinMaxObserver on activations", TorchAoRecipe("MinMaxObserver")),
    }

    def unavailable(self) -> str | None:
        if ENGINE not in torch.backends.quantized.supported_engines:
            return f"this torch build has no {ENGINE} quantized engine"
        return None

    def check_scheme(self, scheme: QuantScheme, config: RecipeConfig) -> str | None:
        if scheme.name not in ("w8a8-pc-rr", "w8a8-pc"):
            return ("torch.ao's default qconfig is per-channel int8 weights and uint8 activations with reduce_range "
                    "(scheme w8a8-pc-rr, the default as it is; w8a8-pc: the same with reduce_range off)")
        return None

    def quantize(self, model: nn.Module, scheme: QuantScheme, calib: Split, config: RecipeConfig,
                 reporter: Reporter) -> Artifact:
        assert isinstance(config, TorchAoRecipe)
        module = quantize_with_torch_ao(model, calib, config, scheme.reduce_range, reporter)
        return Artifact(self.output_format, module, {"engine": ENGINE})

    def info(self) -> dict[str, Any]:
        return {"toolkit": f"torch {torch.__version__}", "engine": ENGINE,
                "tool": "torch.ao.quantization.quantize_fx (prepare_fx / convert_fx)",
                "qconfig": f"get_default_qconfig_mapping({ENGINE!r})",
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@hookimpl
def mqbench_register_toolkits(register: Registry[Toolkit]) -> None:
    register(TorchAoToolkit())
