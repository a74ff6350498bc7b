"""``bias_correction``: empirical bias correction (Finkelstein, Almog & Grobman 2019, "Fighting
Quantization Bias With Bias", Section 3: the iterative estimator and the bias-only training phase;
also Nagel et al. 2019, Section 4.2, empirical variant, which the iterative estimator is).

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

``estimator="training"``: the paper's second estimator. Only the biases of the quantized layers are
trainable; they are fitted by Adam for ``epochs`` passes over the calibration images to minimise the
mean squared error between the quantized network's logits and the float network's (weights and
quantizer parameters stay fixed; gradients pass the activation quantizers by the straight-through
estimator). It starts from the iterative estimate when ``estimator="iterative+training"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.data import Split
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.progress import SILENT, Reporter
from mqbench.quant.qsim import QuantConv2d, QuantLinear, QuantSim, quantized_bias
from mqbench.registry import Registry


@dataclass(frozen=True)
class BiasCorrectionConfig(MethodConfig):
    max_images: int = 256  # calibration images in the single corrected pass (iterative estimator)
    estimator: str = "iterative"  # "iterative", "training" or "iterative+training"
    epochs: int = 2  # bias-only training: passes over the calibration images
    lr: float = 1e-3  # bias-only training: Adam learning rate
    train_batch: int = 32

    def __post_init__(self) -> None:
        if self.estimator not in ("iterative", "training", "iterative+training"):
            raise ValueError(f"estimator must be 'iterative', 'training' or 'iterative+training', got {self.estimator!r}")
        if self.max_images < 1 or self.epochs < 0 or self.lr <= 0 or self.train_batch < 1:
            raise ValueError("max_images, train_batch >= 1, epochs >= 0 and lr > 0 are required")


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
            assert isinstance(bias, torch.Tensor) and isinstance(mod, (QuantConv2d, QuantLinear))
            added = quantized_bias(bias, mod.weight_quantizer, mod.input_quantizer)
            assert added is not None
            # A copy: with a float bias (Placement(int32_bias=False)) quantized_bias returns the bias itself,
            # whose data changes on the next line; the output must still move by the change.
            before = added.detach().clone()
            bias.data = before + shift  # from the bias the runtime adds, so only one rounding remains
            applied[name] = float(shift.abs().max())
            # The layer adds its bias as the runtime does (int32 codes or float), so later layers see that change.
            after = quantized_bias(bias, mod.weight_quantizer, mod.input_quantizer)
            assert after is not None
            return out + (after - before).view(1, -1, *([1] * (out.dim() - 2)))
        handles.append(module.register_forward_hook(correct))
    try:
        with torch.no_grad():
            qsim(images)
    finally:
        for h in handles:
            h.remove()
    return applied


def train_biases(qsim: QuantSim, float_model: nn.Module, calib: Split, config: BiasCorrectionConfig,
                 seed: int = 0, reporter: Reporter = SILENT) -> list[float]:
    """Bias-only training (Finkelstein et al. 2019, Section 3.2): returns the mean loss of each epoch."""
    layers = [qsim.model.get_submodule(name) for name in qsim.weight_quantizers]
    for layer in layers:
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
    biases: list[torch.Tensor] = []
    for layer in layers:
        assert isinstance(layer.bias, torch.Tensor)
        biases.append(layer.bias)
    saved = {id(p): p.requires_grad for p in qsim.parameters()}
    for p in qsim.parameters():
        p.requires_grad_(False)
    for b in biases:
        b.requires_grad_(True)
    optimizer = torch.optim.Adam(biases, lr=config.lr)
    images = calib.normalize(calib.images)
    with torch.no_grad():
        float_model.eval()
        targets = torch.cat([float_model(images[i:i + 64]) for i in range(0, len(images), 64)])
    generator = torch.Generator().manual_seed(seed)
    losses = []
    try:
        for _ in reporter.track(range(config.epochs), "bias-only training (epochs)", total=config.epochs):
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            for start in range(0, len(images), config.train_batch):
                idx = order[start:start + config.train_batch]
                loss = torch.nn.functional.mse_loss(qsim(images[idx]), targets[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(images))
    finally:
        for p in qsim.parameters():
            p.requires_grad_(saved[id(p)])
    return losses


class BiasCorrection(Method):
    name = "bias_correction"
    stage = "refine"
    description = "bias correction (Finkelstein et al. 2019): iterative empirical, or bias-only training"
    config_type = BiasCorrectionConfig

    def refine(self, qsim: QuantSim, float_model: nn.Module, calib: Split, config: MethodConfig,
               ctx: StepContext) -> None:
        assert isinstance(config, BiasCorrectionConfig)
        notes: dict[str, object] = {"estimator": config.estimator}
        if config.estimator in ("iterative", "iterative+training"):
            applied = correct_biases(qsim, calib, config, ctx.batch_size)
            notes.update(layers=len(applied), max_abs_correction=max(applied.values(), default=0.0))
        if config.estimator in ("training", "iterative+training"):
            notes["training_loss_per_epoch"] = train_biases(qsim, float_model, calib, config, ctx.seed, ctx.reporter)
        ctx.notes[self.name] = notes


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(BiasCorrection())
