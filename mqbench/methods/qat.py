"""Quantization-aware training with learned quantizers: ``lsq_qat``, ``tqt_qat`` and ``msqe_qat``, the
gradient-based and the MSQE-based classes of hardware-friendly weight quantizers that Bae, Zielinski &
Chatterjee 2022 ("A Closer Look at Hardware-Friendly Weight Quantization", arXiv 2210.03671) compare
during training, with the remedies they propose.

Each is a refine step that trains (``needs_training``): it starts from the qparams the pipeline's
calibrate step chose (``minmax`` or ``msqe``: "initialised by"), then trains the QuantSim's weights
(BatchNorm already folded into them) together with the quantizers on the train split the harness
supplies, with the straight-through estimator (STE) for rounding, SGD with Nesterov momentum and a
one-cycle cosine schedule (:func:`mqbench.train.train`), flip and random-crop augmentation, for
``epochs`` epochs or until the cell's training budget is spent. With ``distill`` above 0 the loss mixes in the float
model's soft predictions on the same augmented batch (knowledge distillation, Hinton et al. 2015, with the full-precision
network as teacher, as low-bit QAT papers commonly do). Afterwards the learned qparams are
written into the quantizers, so the integer simulation and the real backends deploy exactly what was
trained; the QuantSim's float weights are then the trained ones.

* ``lsq_qat`` (Esser et al. 2020, "Learned Step Size Quantization", Section 2.1-2.2): a real-valued
  step size ``s`` per quantizer (per channel with ``-pc``) for the weights and, when the scheme quantizes
  them, the activations; ``Q(x) = (round(clamp(x / s + z, qmin, qmax)) - z) * s`` whose autograd gradient
  in ``s`` is LSQ's (``round(x/s) - x/s`` inside the range, ``qmin``/``qmax`` outside), scaled by LSQ's
  ``g = 1 / sqrt(N * qmax)`` (``N``: the elements one step size quantizes, per image for activations).
  A step size is floored at 2**-10 of its calibrated value with the gradient passed through (:func:`floored_ste`),
  so one overshooting SGD step cannot silence a channel for good. Initialised by ``mse`` rather than ``minmax``,
  4-bit activations start far closer (MobileNetV2-CIFAR x0.5 w4a4-pc-fl8 before training: 75.69 against 60.35 top-1;
  ``mse+lsq_qat(batch_size=64,channels_last=true,distill=1,epochs=2)`` ends at 79.51, float 81.16).
  Real-valued scales: a ``-pow2`` scheme is refused.
* ``tqt_qat`` (Jain et al. 2020, "Trained Quantization Thresholds", Section 3): the log2 threshold ``l``
  of each weight quantizer is learned; the scale is the power of two ``2 ** (e - (b - 1))`` with
  ``e = ceil(l)`` through the STE. Power-of-two schemes only. Activation qparams stay the calibrate step's.
* ``msqe_qat`` (Bae et al.'s MSQE-based class; the authors' ``quantized_bits_msqe_po2``): no scale is
  learned; at every step each weight quantizer's power-of-two scale is the one of least squared
  quantization error of the current weights (exhaustive search, ``quant.estimators.msqe_scale``), and the
  weights train through the STE. Power-of-two schemes only.

``remedies=true`` applies Bae et al.'s fixes as the authors implement them (``google/qkeras``,
``qkeras/experimental/quantizers/quantizers_po2.py``; only the paper's abstract was reachable here, which
names the two problems: "sensitivity to outliers and convergence instability of the quantizer scaling
factor"):

* for ``tqt_qat``, **Round-to-Lower-MSQE** (``quantized_bits_learnable_po2``'s default): the integer
  exponent is ``floor(l)`` or ``ceil(l)``, whichever gives the lower squared error of the weights within
  the unconstrained threshold ``2 ** l`` (outliers beyond it do not vote), instead of always ``ceil(l)``,
  which rounds the scale up by up to an octave and wastes a bit;
* for ``msqe_qat`` and ``tqt_qat``, the error is **weighted by the root of the second moment of the
  loss gradient** of each weight (an exponential moving average, decay 0.999, of ``(dL/dw_q)^2`` over
  the training steps, counted where the weight is not clipped), so the scale fits the weights the loss is
  sensitive to;
* for ``msqe_qat``, the **outlier mask**: weights beyond ``outlier_sigma`` (2) standard deviations of
  their channel get no vote on the scale.

Without remedies, ``tqt_qat`` rounds with ``ceil`` and ``msqe_qat`` weighs every weight equally. The cost
(epochs, seconds, images) is stored in the record under ``training``; what the quantizers learned (median
and largest change of the scales, in octaves) under ``method_notes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.data import Split
from mqbench.errors import UsageError
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.methods.learned_scale import ste_ceil, ste_round
from mqbench.quant.estimators import Grid, channel_rows, msqe_scale, outlier_mask
from mqbench.quant.qsim import Quantizer, QuantSim
from mqbench.registry import Registry
from mqbench.schemes import QuantScheme


@dataclass(frozen=True)
class QATConfig(MethodConfig):
    version: ClassVar[int] = 1
    epochs: int = 1  # passes over the train split
    # Peak learning rate (SGD, one-cycle) of the weights and of LSQ's step sizes. Lower than LSQ's 0.01: BatchNorm is
    # folded into the weights, and on the quick MobileNetV1 at w3 0.01 diverged in one run of three.
    lr: float = 0.003
    threshold_lr: float = 0.001  # tqt_qat: peak learning rate of the (normalised) log2 thresholds, in octaves
    batch_size: int = 128
    weight_decay: float = 5e-5  # of the weights (LSQ lowers it for low bit widths); none on quantizer parameters
    remedies: bool = False  # Bae et al.'s remedies (see the module docstring)
    crop_padding: int = 4  # random-crop augmentation (4 suits 32x32 CIFAR images)
    train_limit: int = 0  # train on the first N train images only (0: all)
    channels_last: bool = False
    # Distil the float model into the quantized one (Hinton et al. 2015; see mqbench.train.distillation_loss): the
    # weight of the soft-target term (0: plain cross-entropy on the labels) and its temperature.
    distill: float = 0.0
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.train_limit < 0 or self.crop_padding < 0 or self.weight_decay < 0:
            raise ValueError("train_limit, crop_padding and weight_decay must be zero or positive")
        if not 0.0 <= self.distill <= 1.0 or not self.distill_temperature > 0:
            raise ValueError("distill must be in [0, 1] and distill_temperature positive")


@dataclass(frozen=True)
class MSQEQATConfig(QATConfig):
    outlier_sigma: float = 2.0  # with remedies: the outlier mask's threshold in standard deviations


def grad_scaled(x: torch.Tensor, g: float) -> torch.Tensor:
    """``x`` forward, its gradient multiplied by ``g`` (LSQ's step-size gradient scale)."""
    return x * g + (x - x * g).detach()


def floored_ste(x: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """``max(x, floor)`` forward, the identity backward. An LSQ step size that one SGD step overshoots below zero
    would, behind an ordinary clamp, get no gradient again and silence its channel for the rest of training (seen on
    the 8-bit first layer of MobileNetV2-CIFAR at lr 0.01: 5 of 16 steps stuck 17 octaves down); with the gradient
    passed through, the saturating weights pull it back up."""
    return x + (torch.maximum(x, floor) - x).detach()


def fake_quantize_ste(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                      axis: int | None) -> torch.Tensor:
    """``(round(clamp(x / s + z, qmin, qmax)) - z) * s`` with the STE for rounding; ``scale``/``zero_point`` 0-d
    or per channel along ``axis``. Differentiable in ``x`` (1 inside the range, 0 outside) and in ``scale``."""
    if axis is not None and scale.dim() == 1:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zero_point = scale.view(shape), zero_point.view(shape)
    z = zero_point.to(x.dtype)
    return (ste_round(torch.clamp(x / scale + z, qmin, qmax)) - z) * scale


def pow2_exponent_lower_msqe(level: torch.Tensor, weight: torch.Tensor, bits: int, qmin: int, qmax: int,
                             importance: torch.Tensor | None) -> torch.Tensor:
    """Round-to-Lower-MSQE: per row of ``weight`` (channels on axis 0, or one row when ``level`` is 0-d), the
    exponent ``floor(level)`` or ``ceil(level)`` whose power-of-two threshold quantizes the weights within the
    unconstrained threshold ``2 ** level`` with the lower (``importance``-weighted) squared error."""
    rows = channel_rows(weight, None if level.dim() == 0 else 0)
    lv = level.detach().reshape(-1, 1)
    vote = (rows.abs() <= torch.exp2(lv - (bits - 1)) * (qmax + 0.5)).to(rows.dtype)
    if importance is not None:
        vote = vote * channel_rows(importance, None if level.dim() == 0 else 0)

    def error(e: torch.Tensor) -> torch.Tensor:
        s = torch.exp2(e - (bits - 1))
        return (((torch.clamp(torch.round(rows / s), qmin, qmax) * s - rows) ** 2) * vote).sum(1, keepdim=True)

    down, up = torch.floor(lv), torch.ceil(lv)
    return torch.where(error(down) < error(up), down, up).reshape(level.shape)


class _SecondMoments(torch.autograd.Function):
    """Identity forward; backward records the squared upstream gradient (where not clipped) in an EMA."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, owner: LearnedQuantizer, inside: torch.Tensor) -> torch.Tensor:
        ctx.owner = owner
        ctx.save_for_backward(inside)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inside,) = ctx.saved_tensors
        ctx.owner.update_moments(grad.detach() ** 2 * inside)
        return grad, None, None


class LearnedQuantizer(nn.Module):
    """Fake-quantizes in place of a :class:`Quantizer`'s fixed qparams during training (``Quantizer.learned``)."""

    MOMENTS_DECAY = 0.999  # the authors' second_moments_ema_decay
    # LSQ's step sizes never go below 2**-10 of their calibrated value (see floored_ste).
    STEP_FLOOR = 2.0 ** -10
    zero_point: torch.Tensor
    current_scale: torch.Tensor

    def __init__(self, quantizer: Quantizer, kind: str, remedies: bool, elements_per_scale: int,
                 outlier_sigma: float = 2.0) -> None:
        super().__init__()
        if quantizer.scale is None or quantizer.zero_point is None:
            raise RuntimeError(f"quantizer {quantizer.name} has no qparams: QAT starts from a calibrate step's")
        self._target = (quantizer,)  # not a submodule: the quantizer holds this module (no cycle in the tree)
        self.kind, self.remedies, self.outlier_sigma = kind, remedies, outlier_sigma
        self.initial_scale = quantizer.scale.clone()
        self.register_buffer("zero_point", quantizer.zero_point.clone())
        self.moments: torch.Tensor | None = None
        bits, qmax = quantizer.bits, quantizer.qmax
        if kind == "lsq":
            self.step = nn.Parameter(quantizer.scale.clone())
            self.grad_scale = 1.0 / math.sqrt(max(1, elements_per_scale) * qmax)
        elif kind == "tqt":
            # With ceil: in the middle of the octave whose ceil is the calibrated exponent (started on the integer
            # itself, the first step up would ceil to the next octave and halve every channel's resolution at
            # once). With Round-to-Lower-MSQE: on it, so the unconstrained threshold covers the calibrated range
            # and every weight inside it votes.
            start = torch.log2(quantizer.scale) + (bits - 1)
            self.log2_threshold = nn.Parameter(start if remedies else start - 0.5)
            self.log2_threshold.register_hook(self._normalized)
            self._grad_sq: torch.Tensor | None = None
            self._grad_steps = 0
        self.register_buffer("current_scale", quantizer.scale.clone())

    def _normalized(self, grad: torch.Tensor) -> torch.Tensor:
        """TQT trains the log thresholds with Adam (Jain et al. 2020, Section 3.4): their gradients differ by orders
        of magnitude across layers. The gradient is divided by the root of its bias-corrected moving second
        moment (Adam's normalisation, decay 0.999); SGD's momentum then plays Adam's first moment."""
        g2 = grad.detach() ** 2
        self._grad_sq = g2 if self._grad_sq is None else 0.999 * self._grad_sq + 0.001 * g2
        self._grad_steps += 1
        return grad / ((self._grad_sq / (1 - 0.999 ** self._grad_steps)).sqrt() + 1e-8)

    @property
    def quantizer(self) -> Quantizer:
        return self._target[0]

    def update_moments(self, squared: torch.Tensor) -> None:
        self.moments = (squared.clone() if self.moments is None
                        else self.MOMENTS_DECAY * self.moments + (1 - self.MOMENTS_DECAY) * squared)

    def _importance(self) -> torch.Tensor | None:
        return self.moments.sqrt() if (self.remedies and self.moments is not None) else None

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantizer
        if self.kind == "lsq":
            return grad_scaled(floored_ste(self.step, self.initial_scale * self.STEP_FLOOR), self.grad_scale)
        if self.kind == "tqt":
            level = self.log2_threshold
            if self.remedies:
                e = pow2_exponent_lower_msqe(level, x, q.bits, q.qmin, q.qmax, self._importance())
                exponent = level + (e - level).detach()
            else:
                exponent = ste_ceil(level)
            return torch.exp2(exponent - (q.bits - 1))
        with torch.no_grad():  # msqe: the power-of-two scale of least (weighted) squared error of the weights now
            rows = channel_rows(x, q.axis)
            counts = torch.ones_like(rows)
            if self.remedies:
                counts = outlier_mask(rows, self.outlier_sigma)
                importance = self._importance()
                if importance is not None:
                    counts = counts * channel_rows(importance, q.axis)
            unweighted = counts.sum(1, keepdim=True) <= 0  # a row with no vote (all masked): every weight votes
            counts = torch.where(unweighted, torch.ones_like(counts), counts)
            s = msqe_scale(rows, counts, Grid(q.bits, True, q.signed, True)).clamp(min=2.0 ** -30)
            return s.reshape(q.scale.shape if q.scale is not None else s.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantizer
        scale = self.scale(x)
        self.current_scale = scale.detach().reshape(self.current_scale.shape)
        y = fake_quantize_ste(x, scale, self.zero_point, q.saturate_min, q.saturate_max, q.axis)
        if self.remedies and q.kind == "weight" and self.kind != "lsq" and torch.is_grad_enabled():
            with torch.no_grad():
                s = scale.detach()
                if q.axis is not None and s.dim() == 1:
                    s = s.view([-1] + [1] * (x.dim() - 1))
                codes = torch.round(x.detach() / s)
                inside = ((codes >= q.qmin) & (codes <= q.qmax)).to(x.dtype)
            y = _SecondMoments.apply(y, self, inside)
        return y

    def final_scale(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The scale to deploy: the learned step (lsq), or the power of two (tqt, msqe) for ``weight``, the trained
        weights (without it: the one the last training step used)."""
        if self.kind == "lsq":
            return torch.maximum(self.step.detach(), self.initial_scale * self.STEP_FLOOR).clone()
        if weight is None:
            return self.current_scale.clone()
        with torch.no_grad():
            return self.scale(weight.detach()).detach().reshape(self.current_scale.shape).clone()


def _elements_per_scale(qsim: QuantSim, images: torch.Tensor) -> dict[tuple[str, str], int]:
    """LSQ's N per quantizer (keyed by kind and name): weights per scale; activation elements per image."""
    counts: dict[tuple[str, str], int] = {}
    for name, wq in qsim.weight_quantizers.items():
        w = qsim.layer_weight(name)
        counts[("weight", wq.name)] = w.numel() // (w.shape[0] if wq.axis is not None else 1)
    hooks = [aq.register_forward_hook(lambda m, _i, out, n=name: counts.__setitem__(("activation", n),
                                                                                      out[0].numel()))
             for name, aq in qsim.act_quantizers.items()]
    try:
        with torch.no_grad():
            qsim(images[:1])
    finally:
        for h in hooks:
            h.remove()
    return counts


class _QAT(Method):
    stage = "refine"
    needs_training = True
    config_type: type[MethodConfig] = QATConfig
    kind = ""

    def check_scheme(self, scheme: QuantScheme, config: MethodConfig) -> str | None:
        if not scheme.weight_symmetric:
            return f"{self.name} trains symmetric (hardware-friendly) weight scales; drop -asym from the scheme"
        if self.kind == "lsq" and scheme.power_of_two:
            return "lsq_qat learns real-valued step sizes; use tqt_qat or msqe_qat for -pow2 schemes"
        if self.kind != "lsq" and not scheme.power_of_two:
            return f"{self.name} trains power-of-two weight scales; use a -pow2 scheme, or lsq_qat"
        return None

    def refine(self, qsim: QuantSim, float_model: nn.Module, calib: Split, config: MethodConfig,
               ctx: StepContext) -> None:
        from mqbench.train import TrainConfig, train

        assert isinstance(config, QATConfig)
        if ctx.train is None:
            raise UsageError(f"{self.name} trains on the train split, and the harness gave it none")
        split = ctx.train.head(config.train_limit or None)
        sigma = config.outlier_sigma if isinstance(config, MSQEQATConfig) else 2.0
        learned_acts = self.kind == "lsq"  # TQT and the MSQE class are weight quantizers here (Bae et al.'s study)
        sample = next(split.batches(2))[0]
        per_scale = _elements_per_scale(qsim, sample)
        learners: list[LearnedQuantizer] = []  # (a list: a layer's weight and output quantizers share its name)
        for q in (*qsim.weight_quantizers.values(), *(qsim.act_quantizers.values() if learned_acts else ())):
            if q.mode != "quantize":
                continue
            learner = LearnedQuantizer(q, self.kind, config.remedies, per_scale.get((q.kind, q.name), 1), sigma)
            q.learned = learner
            learners.append(learner)
        quantizer_params = [p for learner in learners for p in learner.parameters()]
        ids = {id(p) for p in quantizer_params}
        weights = [p for p in qsim.parameters() if id(p) not in ids]
        groups: list[dict[str, Any]] = [{"params": weights}]
        if quantizer_params:
            groups.append({"params": quantizer_params, "weight_decay": 0.0,
                           "lr": config.threshold_lr if self.kind == "tqt" else config.lr})
        train_config = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                                   weight_decay=config.weight_decay, seed=ctx.seed, crop_padding=config.crop_padding,
                                   channels_last=config.channels_last, distill_weight=config.distill,
                                   distill_temperature=config.distill_temperature)
        try:
            result = train(qsim, split, None, train_config, ctx.reporter, label=f"{self.name} QAT",
                           time_budget_s=ctx.train_budget_s, param_groups=groups,
                           teacher=float_model if config.distill > 0 else None)
        finally:
            for learner in learners:
                learner.quantizer.learned = None
        changes = []
        for learner in learners:
            q = learner.quantizer
            assert q.zero_point is not None
            weight = qsim.layer_weight(q.name) if q.kind == "weight" else None
            final = learner.final_scale(weight).reshape(learner.initial_scale.shape)
            q.set_qparams(final, q.zero_point)
            changes.append((final / learner.initial_scale).log2().abs().flatten())
        octaves = torch.cat(changes) if changes else torch.zeros(1)
        qsim.eval()
        ctx.notes[self.name] = {"quantizers_trained": len(learners), "scale_change_octaves_median":
                                float(octaves.median()), "scale_change_octaves_max": float(octaves.max())}
        ctx.training[self.name] = {
            "epochs": result.epochs_done, "epochs_planned": config.epochs, "seconds": round(result.seconds, 3),
            "train_images": len(split), "images_seen": len(split) * result.epochs_done,
            "stopped_by_time_budget": result.stopped_by_time_budget, "time_budget_s": ctx.train_budget_s,
            "threads": torch.get_num_threads(), "history": result.history}


class LSQQAT(_QAT):
    name = "lsq_qat"
    kind = "lsq"
    description = ("QAT with LSQ step sizes (Esser et al. 2020) for weights and activations, trained with the weights "
                   "(STE, gradient scaling)")


class TQTQAT(_QAT):
    name = "tqt_qat"
    kind = "tqt"
    description = ("QAT with TQT power-of-two log2 weight thresholds (Jain et al. 2020); remedies=true: Bae et al.'s "
                   "Round-to-Lower-MSQE")


class MSQEQAT(_QAT):
    name = "msqe_qat"
    kind = "msqe"
    config_type = MSQEQATConfig
    description = ("QAT with power-of-two weight scales of least squared error, recomputed every step (Bae et al.'s "
                   "MSQE class); remedies=true: outlier mask and second-moment weighting")


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(LSQQAT())
    register(TQTQAT())
    register(MSQEQAT())
