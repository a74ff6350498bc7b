"""``torch-default``: the peer row of what a user would do without mqbench in PyTorch.

torch.ao's FX graph mode post-training quantization with the engine's default qconfig, exactly as its
tutorial does it: ``prepare_fx(model, get_default_qconfig_mapping(engine), example)``, the calibration
images run through the observed model, ``convert_fx``. For the ``x86`` engine (torch's default on x86
CPUs) that is a ``HistogramObserver`` on activations (quint8, ``reduce_range=True``: 7-bit activations,
torch's guard against overflow in the u8 x s8 multiply without VNNI) and a per-channel min/max observer
on weights (qint8 symmetric): scheme ``w8a8-pc-rr``. Scheme ``w8a8-pc`` runs the same observers with
``reduce_range=False`` (the comparison at 8-bit activations; this machine's VNNI kernels do not need the
guard). The pipeline names the calibration: ``mse`` is torch's default (HistogramObserver), so named
because HistogramObserver searches the clipping range that minimises the L2
quantization error over its histogram (what mqbench's ``mse`` does with its own search); ``minmax``
replaces the activation observer by ``MinMaxObserver``, weights unchanged.

Nothing of mqbench's QuantSim is involved, so the row has no simulated accuracy and no agreement.
``torch.ao.quantization`` is deprecated upstream (pytorch/pytorch#184982; PT2E with torchao replaces
it): like ``torch_int8``, this module keeps every use of it here.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.backends import Backend, Deployed
from mqbench.backends.torch_int8 import TorchInt8Model
from mqbench.data import Split
from mqbench.models.layers import Conv2dSame, tf_same_pad
from mqbench.progress import Reporter
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme

ENGINE = "x86"
CALIBRATIONS = {"mse": "HistogramObserver (torch.ao's default qconfig)", "minmax": "MinMaxObserver"}
CALIB_BATCH = 32


def qconfig_mapping(calibration: str, reduce_range: bool) -> Any:
    """The engine's default qconfig mapping, with the activation observer ``calibration`` names and
    ``reduce_range`` as the scheme says (the default's is True)."""
    from torch.ao.quantization import HistogramObserver, MinMaxObserver, QConfig, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(ENGINE)
    observer = HistogramObserver if calibration == "mse" else MinMaxObserver
    if calibration != "mse" or not reduce_range:
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


def quantize_with_torch_ao(model: nn.Module, calib: Split, calibration: str, reduce_range: bool,
                           reporter: Reporter) -> nn.Module:
    """``model`` quantized by torch.ao's FX post-training flow (module docstring)."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = ENGINE
    example = calib.normalize(calib.images[:1])
    float_model = with_static_padding(model, example)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        prepared = prepare_fx(float_model, qconfig_mapping(calibration, reduce_range), (example,))
        for x, _ in reporter.track(calib.batches(CALIB_BATCH), f"calibrating (torch.ao, {calibration})",
                                   total=-(-len(calib) // CALIB_BATCH)):
            prepared(x)
        return convert_fx(prepared).eval()


class TorchDefault(Backend):
    name = "torch-default"
    description = (f"peer row: torch.ao's default post-training quantization for the {ENGINE} engine "
                   "(HistogramObserver), no QuantSim")
    calibrates_itself = True
    calibrations = CALIBRATIONS

    def unavailable(self) -> str | None:
        if ENGINE not in torch.backends.quantized.supported_engines:
            return f"this torch build has no {ENGINE} quantized engine"
        return None

    def check_scheme(self, scheme: QuantScheme) -> str | None:
        if scheme.name not in ("w8a8-pc-rr", "w8a8-pc"):
            return ("torch.ao's default qconfig is per-channel int8 weights and uint8 activations with reduce_range "
                    "(scheme w8a8-pc-rr, the default as it is; w8a8-pc: the same with reduce_range off)")
        return None

    def quantize(self, model: nn.Module, scheme: QuantScheme, calib: Split, pipeline: str,
                 reporter: Reporter) -> Deployed:
        return TorchInt8Model(quantize_with_torch_ao(model, calib, pipeline, scheme.reduce_range, reporter), ENGINE)

    def deploy_float(self, model: nn.Module) -> Deployed:
        return model.eval()

    def info(self) -> dict[str, Any]:
        return {"runtime": f"torch {torch.__version__}", "engine": ENGINE,
                "tool": "torch.ao.quantization.quantize_fx (prepare_fx / convert_fx)",
                "qconfig": f"get_default_qconfig_mapping({ENGINE!r})", "activation_reduce_range": True,
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@hookimpl
def mqbench_register_backends(register: Registry[Backend]) -> None:
    register(TorchDefault())
