"""``lsq`` and ``tqt``: weight scales learned by gradient descent, the gradient-based class of
hardware-friendly weight quantizers compared with MSQE by Bae, Zielinski & Chatterjee 2022 (arXiv
2210.03671), here as post-training refine steps with a layer-wise reconstruction loss.

Both start from the scales of the calibrate step (``msqe``, ``mse``, ``minmax``) and, layer by layer
in network order, minimise ``|| f(W x) - f(Q_s(W) x~) ||^2`` on calibration data (the reconstruction
data of ``mqbench.quant.reconstruction``: float targets, inputs from the quantized network with the
earlier layers already fitted), with the straight-through estimator for rounding:

* ``lsq`` (Esser et al. 2020, "Learned Step Size Quantization", Section 2): the real-valued step
  ``s``; ``Q_s(W) = round(clamp(W / s, qmin, qmax)) * s`` whose gradient in ``s`` is LSQ's
  (``-W/s + round(W/s)`` inside the range, ``qmin``/``qmax`` outside), scaled by LSQ's
  ``g = 1 / sqrt(N * qmax)`` (``N`` weights per scale). Adam normalises a constant gradient scale
  away (up to its epsilon), so ``g`` is kept for fidelity, not because it changes Adam's steps; the
  learning rate is relative (the step is learned as ``s0 * r``, Adam on ``r``), so one setting serves
  layers whose scales differ by orders of magnitude. Real-valued scales: a ``-pow2`` scheme is refused.
* ``tqt`` (Jain et al. 2020, "Trained Quantization Thresholds", Section 3): the log2 threshold
  ``l``; ``s = 2 ** e / 2 ** (b - 1)``, a power of two, learned in the log domain (Adam) with the
  straight-through estimator for the integer exponent ``e``: TQT's ``e = ceil(l)`` by default
  (``rounding=ceil``). ``rounding=msqe`` is Bae et al.'s remedy for the gradient-based class
  ("Round-to-Lower-MSQE", the default of the authors' ``quantized_bits_learnable_po2`` in
  ``google/qkeras``, ``qkeras/experimental/quantizers/quantizers_po2.py``): per channel, ``e`` is
  ``floor(l)`` or ``ceil(l)``, whichever quantizes the weights with the lower squared error, counted
  over the weights inside the unconstrained threshold ``2 ** l`` (the outliers beyond it do not vote).
  It is not the default here: the authors train weights and exponents together for many epochs; with
  a post-training reconstruction loss the weight error, not the loss, then picks the octave, and on
  the unit test's layer it left the start unchanged at lr 1e-2 and 0.2 (ceil: -5% and -18%).
  Power-of-two scales only: a scheme without ``-pow2`` is refused.

Both need symmetric weights (hardware-friendly; ``-asym`` is refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.data import Split
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.quant.qsim import QuantSim
from mqbench.quant.reconstruction import LayerData, channel_view, fit_layers
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme


@dataclass(frozen=True)
class LearnedScaleConfig(MethodConfig):
    iterations: int = 300  # Adam steps per layer
    batch_rows: int = 1024  # sampled output positions per step
    images: int = 256  # calibration images whose activations are reconstructed
    positions: int = 32  # output positions sampled per image and layer
    lr: float = 1e-2  # Adam: relative step change (lsq) or log2 units (tqt)

    def __post_init__(self) -> None:
        if min(self.iterations, self.batch_rows, self.images, self.positions) < 1:
            raise ValueError("iterations, batch_rows, images and positions must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


@dataclass(frozen=True)
class TQTConfig(LearnedScaleConfig):
    version: ClassVar[int] = 2

    rounding: str = "ceil"  # the integer exponent: "ceil" (TQT) or "msqe" (Bae et al. 2022)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounding not in ("msqe", "ceil"):
            raise ValueError(f"rounding must be 'msqe' or 'ceil', got {self.rounding!r}")


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient."""
    return x + (torch.round(x) - x).detach()


def ste_ceil(x: torch.Tensor) -> torch.Tensor:
    """``ceil(x)`` forward, identity gradient."""
    return x + (torch.ceil(x) - x).detach()


def lsq_quantize(weight: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, grad_scale: float) -> torch.Tensor:
    """LSQ's fake quantizer: ``round(clamp(W / s, qmin, qmax)) * s``, the gradient in ``s`` scaled by ``grad_scale``."""
    s = scale * grad_scale + (scale - scale * grad_scale).detach()
    return ste_round(torch.clamp(weight / s, qmin, qmax)) * s


def tqt_scale(log2_threshold: torch.Tensor, bits: int) -> torch.Tensor:
    """TQT's power-of-two scale ``2 ** ceil(l) / 2 ** (bits - 1)`` (straight-through ``ceil``)."""
    return torch.exp2(ste_ceil(log2_threshold) - (bits - 1))


def msqe_rounded_scale(log2_threshold: torch.Tensor, weight: torch.Tensor, bits: int, qmin: int,
                       qmax: int) -> torch.Tensor:
    """The power-of-two scale ``2 ** e / 2 ** (bits - 1)`` with ``e`` in ``{floor(l), ceil(l)}`` of the
    lower squared error of ``weight`` (``(G, O, I)``; ``l`` per output channel ``(G, O, 1)`` or 0-d),
    counted over the weights within the unconstrained threshold; straight-through in ``l``."""
    level = log2_threshold.detach()
    reduce = (0, 1, 2) if level.dim() == 0 else (2,)
    inside = (weight.abs() <= torch.exp2(level - (bits - 1)) * (qmax + 0.5)).to(weight.dtype)

    def error(e: torch.Tensor) -> torch.Tensor:
        s = torch.exp2(e - (bits - 1))
        return (((torch.clamp(torch.round(weight / s), qmin, qmax) * s - weight) ** 2) * inside).sum(reduce).reshape(
            level.shape)

    down, up = torch.floor(level), torch.ceil(level)
    e = torch.where(error(down) < error(up), down, up)
    return torch.exp2(log2_threshold + (e - log2_threshold).detach() - (bits - 1))


def learn_scale(data: LayerData, method: str, config: LearnedScaleConfig,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Learn one layer's weight scale (``lsq`` or ``tqt``); returns the scale shaped like the quantizer's."""
    quantizer = data.quantizer
    if quantizer.scale is None:
        raise RuntimeError(f"quantizer {quantizer.name} has no qparams: {method} needs a calibrate step before it")
    shape = (data.weight.shape[0], data.weight.shape[1])
    s0 = channel_view(quantizer.scale, shape).clone()
    qmin, qmax, bits = quantizer.qmin, quantizer.qmax, quantizer.bits
    per_scale = data.weight.numel() // max(1, quantizer.scale.numel())
    grad_scale = 1.0 / math.sqrt(per_scale * qmax)
    if method == "lsq":
        param = nn.Parameter(torch.ones_like(s0))

        def scale_of(p: torch.Tensor) -> torch.Tensor:
            return s0 * p
    else:  # tqt: the log2 threshold
        param = nn.Parameter(torch.log2(s0) + (bits - 1))
        msqe_rounding = isinstance(config, TQTConfig) and config.rounding == "msqe"

        def scale_of(p: torch.Tensor) -> torch.Tensor:
            return msqe_rounded_scale(p, data.weight, bits, qmin, qmax) if msqe_rounding else tqt_scale(p, bits)

    def quantized(p: torch.Tensor) -> torch.Tensor:
        return lsq_quantize(data.weight, scale_of(p), qmin, qmax, grad_scale if method == "lsq" else 1.0)

    with torch.no_grad():
        initial = float(data.loss(quantized(param)))
    optimizer = torch.optim.Adam([param], lr=config.lr)
    rows_per_step = min(config.batch_rows, data.x_rows.shape[0])
    best, best_loss = param.detach().clone(), initial
    for _ in range(config.iterations):
        rows = torch.randint(data.x_rows.shape[0], (rows_per_step,), generator=generator)
        loss = data.loss(quantized(param), rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if method == "lsq":
            with torch.no_grad():  # a step size stays positive (at least 1/1000 of where it started)
                param.clamp_(min=1e-3)
    with torch.no_grad():
        final = float(data.loss(quantized(param)))
        if final < best_loss:  # the full-data loss decides: a learned scale never makes the layer worse
            best, best_loss = param.detach().clone(), final
        scale = scale_of(best).reshape(quantizer.scale.shape)
    return scale, {"loss_initial": initial, "loss_learned": best_loss,
                   "scale_change": float((scale / quantizer.scale).log2().abs().max())}


class _LearnedScale(Method):
    stage = "refine"
    config_type = LearnedScaleConfig

    def check_scheme(self, scheme: QuantScheme, config: MethodConfig) -> str | None:
        if not scheme.weight_symmetric:
            return f"{self.name} learns symmetric (hardware-friendly) weight scales; drop -asym from the scheme"
        if self.name == "lsq" and scheme.power_of_two:
            return "lsq learns real-valued scales, not power-of-two ones; use tqt for -pow2 schemes"
        if self.name == "tqt" and not scheme.power_of_two:
            return "tqt learns power-of-two scales (log2 thresholds); use a -pow2 scheme, or lsq"
        return None

    def refine(self, qsim: QuantSim, float_model: nn.Module, calib: Split, config: MethodConfig,
               ctx: StepContext) -> None:
        assert isinstance(config, LearnedScaleConfig)
        generator = torch.Generator().manual_seed(ctx.seed)

        def fit(data: LayerData) -> dict[str, float]:
            scale, stats = learn_scale(data, self.name, config, generator)
            data.quantizer.set_qparams(scale, torch.zeros_like(scale, dtype=torch.int64))
            return stats

        ctx.notes[self.name] = fit_layers(qsim, calib, fit, images=config.images, positions=config.positions,
                                          before="loss_initial", after="loss_learned", seed=ctx.seed,
                                          batch_size=min(ctx.batch_size, 32), reporter=ctx.reporter,
                                          description=f"{self.name} (layers)")


class LSQ(_LearnedScale):
    name = "lsq"
    description = "real-valued weight scales learned by gradient (LSQ, Esser et al. 2020), layer-wise reconstruction"


class TQT(_LearnedScale):
    name = "tqt"
    config_type = TQTConfig
    description = "power-of-two weight scales learned as log2 thresholds (TQT, Jain et al. 2020), layer-wise"


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(LSQ())
    register(TQT())
