"""``bias_correction``: empirical bias correction (Finkelstein, Almog & Grobman 2019, "Fighting
Quantization Bias With Bias", Section 3, the iterative estimator; also Nagel et al. 2019, Section 4.2,
empirical variant).

Quantization shifts the mean of each output channel of a layer; the shift propagates and
accumulates through the network. Layer by layer in network order, with every earlier correction
applied, compare the per-channel mean of the layer's output in the quantized network with the float
network's on unlabelled calibration images, and add the difference to the layer's bias.

Implementation: one float pass records every layer's per-channel output mean; then one quantized
pass over the same images *as a single batch* applies the corrections in network order through
forward hooks: when layer L runs, all earlier layers are already corrected, so its measured shift is
exactly the iterative estimator's, and adding it to L's output equals re-running with the new bias.
Two forward passes replace the 2 x (number of layers) of a literal implementation. ``max_images``
bounds the single batch (memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.data import Split
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.quant.qsim import QuantSim
from mqbench.registry import Registry


@dataclass(frozen=True)
class BiasCorrectionConfig(MethodConfig):
    max_images: int = 256  # calibration images in the single corrected pass


def channel_mean(out: torch.Tensor) -> torch.Tensor:
    """Per-channel mean over batch and space: (N, C, ...) -> (C,)."""
    return out.transpose(0, 1).flatten(1).mean(1)


def correct_biases(qsim: QuantSim, calib: Split, config: BiasCorrectionConfig, batch_size: int = 256) -> dict[str, float]:
    """Apply the correction in place; returns the largest |correction| per layer."""
    layers = {name: qsim.model.get_submodule(name) for name in qsim.weight_quantizers}
    images = calib.normalize(calib.images[: config.max_images])
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in layers.items():
        def record(mod: nn.Module, inp: object, out: torch.Tensor, name: str = name) -> None:
            m = channel_mean(out) * out.shape[0]
            sums[name] = sums[name] + m if name in sums else m
        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad(), qsim.float_mode():
            for start in range(0, len(images), batch_size):
                qsim(images[start:start + batch_size])
    finally:
        for h in handles:
            h.remove()
    float_means = {name: s / len(images) for name, s in sums.items()}
    applied: dict[str, float] = {}
    handles = []
    for name, module in layers.items():
        def correct(mod: nn.Module, inp: object, out: torch.Tensor, name: str = name) -> torch.Tensor:
            shift = float_means[name] - channel_mean(out)
            if mod.bias is None:
                mod.bias = nn.Parameter(torch.zeros_like(shift))
            bias = mod.bias
            assert isinstance(bias, torch.Tensor)
            bias.data += shift
            applied[name] = float(shift.abs().max())
            return out + shift.view(1, -1, *([1] * (out.dim() - 2)))
        handles.append(module.register_forward_hook(correct))
    try:
        with torch.no_grad():
            qsim(images)
    finally:
        for h in handles:
            h.remove()
    return applied


class BiasCorrection(Method):
    name = "bias_correction"
    stage = "refine"
    description = "iterative empirical bias correction (Finkelstein et al. 2019)"
    config_type = BiasCorrectionConfig

    def refine(self, qsim: QuantSim, float_model: nn.Module, calib: Split, config: MethodConfig,
               ctx: StepContext) -> None:
        assert isinstance(config, BiasCorrectionConfig)
        applied = correct_biases(qsim, calib, config, ctx.batch_size)
        ctx.notes[self.name] = {"layers": len(applied), "max_abs_correction": max(applied.values(), default=0.0)}


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(BiasCorrection())
