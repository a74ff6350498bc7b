"""``adaround``: learned rounding of the weights, layer by layer (Nagel et al. 2020, "Up or Down?
Adaptive Rounding for Post-Training Quantization", ICML; Sections 3-5).

Rounding each weight to its nearest grid point is not what minimises the error of the layer's
output. AdaRound keeps each weight's grid scale (from the calibrate step) and learns, per weight,
whether to round down or up::

    W~ = s * (clamp(floor(W / s) + h(V), qmin, qmax) - z),   h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)

    minimise over V:  || f(W x) - f(W~ x~) ||^2  +  lambda * sum(1 - |2 h(V) - 1| ** beta)

where ``x`` is the layer's input in the float network, ``x~`` its input in the quantized network with
every earlier layer already rounded (the paper's asymmetric reconstruction, Section 5, Eq. 25) and
``f`` the activation fused into the layer (ReLU6, ReLU, a clip), so errors the activation removes do
not count. The regulariser pushes ``h`` to 0 or 1; ``beta`` anneals from 20 to 2 after a warm-up
(20% of the iterations) without it. ``V`` starts where ``h(V)`` equals the fractional part, i.e. at
nearest rounding's float value. Lambda 0.01, zeta 1.1, gamma -0.1, beta 20 -> 2 and the 20% warm-up are
the paper's values (Section 5 and its Appendix; BRECQ's public implementation uses the same); the paper's
Adam learning rate 1e-3 goes with 10k steps, so with 10x fewer steps the default here is 1e-2 (with 1e-3,
``V`` cannot move far enough in 1000 steps to flip a rounding that starts far from 0.5).

Cost. Layers are optimised in network order on the reconstruction data of
``mqbench.quant.reconstruction``: ``positions`` sampled output positions per image, each an input patch
row of the quantized network and the float network's output there, so a layer costs ``iterations``
grouped matrix products of ``batch_rows`` rows, independent of the image resolution. The paper
reconstructs whole feature maps of 32 images per iteration for 10k-20k iterations (GPU hours on
ImageNet); sampled positions with fewer iterations (default 1000) are what fits minutes on two CPU cores.
The README reports the accuracy against ``iterations`` (MobileNetV2, w4a8-pc: 0.7454 with the defaults).

The result leaves the method *on the grid*: each layer's deployed weight becomes exactly
``s * (q - z)`` for its learned integer codes ``q``, so quantizing it again with the same scale (what
every backend does) gives back the same codes. The original float weights stay with the QuantSim for
its float mode (later steps, such as bias correction, compare against the real float model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mqbench import hookimpl
from mqbench.data import Split
from mqbench.methods import Method, MethodConfig, StepContext
from mqbench.quant.qsim import QuantSim
from mqbench.quant.reconstruction import LayerData, channel_view, fit_layers
from mqbench.registry import Registry

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (Louizos et al. 2018), as in the paper


@dataclass(frozen=True)
class AdaRoundConfig(MethodConfig):
    iterations: int = 1000  # Adam steps per layer (paper: 10000)
    batch_rows: int = 1024  # sampled output positions per step
    images: int = 256  # calibration images whose activations are reconstructed
    positions: int = 64  # output positions sampled per image and layer (all of them when fewer)
    lr: float = 1e-2  # Adam learning rate (paper: 1e-3 with 10x the iterations)
    reg_weight: float = 0.01  # lambda of the rounding regulariser (paper)
    beta_start: float = 20.0  # annealing of the regulariser's exponent (paper: 20 -> 2)
    beta_end: float = 2.0
    warmup: float = 0.2  # fraction of the iterations without the regulariser (paper)

    def __post_init__(self) -> None:
        if min(self.iterations, self.batch_rows, self.images, self.positions) < 1:
            raise ValueError("iterations, batch_rows, images and positions must be >= 1")
        if self.lr <= 0 or self.reg_weight < 0 or not 0 <= self.warmup < 1:
            raise ValueError("lr > 0, reg_weight >= 0 and 0 <= warmup < 1 are required")
        if not self.beta_start >= self.beta_end > 0:
            raise ValueError("beta_start >= beta_end > 0 is required")


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (paper Eq. 23)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(rest: torch.Tensor) -> torch.Tensor:
    """The ``V`` with ``h(V) = rest`` (the fractional part of ``W / s``), so optimisation starts at the float weight."""
    rest = rest.clamp(1e-4, 1 - 1e-4)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """``sum(1 - |2h - 1| ** beta)``: zero when every ``h`` is 0 or 1 (paper Eq. 24)."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def beta_at(step: int, config: AdaRoundConfig) -> float | None:
    """The regulariser's exponent at ``step``: None during warm-up, then linear from beta_start to beta_end."""
    start = int(config.warmup * config.iterations)
    if step < start:
        return None
    progress = (step - start) / max(1, config.iterations - start)
    return config.beta_start + (config.beta_end - config.beta_start) * progress


def round_layer(data: LayerData, config: AdaRoundConfig, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Learn the rounding of one layer; returns its integer codes ``(G, O, I)`` and statistics."""
    quantizer = data.quantizer
    if quantizer.scale is None or quantizer.zero_point is None:
        raise RuntimeError(f"quantizer {quantizer.name} has no qparams: adaround needs a calibrate step before it")
    shape = (data.weight.shape[0], data.weight.shape[1])
    scale = channel_view(quantizer.scale, shape)
    zero = channel_view(quantizer.zero_point.float(), shape)
    scaled = data.weight * (1.0 / scale)
    floor = torch.floor(scaled)
    nearest_up = (scaled - floor >= 0.5).float()
    v = nn.Parameter(initial_v(scaled - floor))
    optimizer = torch.optim.Adam([v], lr=config.lr)
    qmin, qmax = quantizer.qmin, quantizer.qmax

    def deployed(h: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(floor + h + zero, qmin, qmax) - zero) * scale

    with torch.no_grad():
        nearest_loss = float(data.loss(deployed(nearest_up)))
    rows_per_step = min(config.batch_rows, data.x_rows.shape[0])
    for step in range(config.iterations):
        rows = torch.randint(data.x_rows.shape[0], (rows_per_step,), generator=generator)
        h = rectified_sigmoid(v)
        loss = data.loss(deployed(h), rows)
        beta = beta_at(step, config)
        if beta is not None and config.reg_weight > 0:
            loss = loss + config.reg_weight * rounding_regularizer(h, beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        up = (v >= 0).float()
        codes = torch.clamp(floor + up + zero, qmin, qmax)
        final_loss = float(data.loss(deployed(up)))
        changed = float((up != nearest_up).float().mean())
    return codes, {"loss_nearest": nearest_loss, "loss_adaround": final_loss, "changed_roundings": changed}


def deployed_weight(codes: torch.Tensor, data: LayerData) -> torch.Tensor:
    """The on-grid float weight ``s * (q - z)`` of integer ``codes (G, O, I)``, in the layer's weight shape."""
    quantizer = data.quantizer
    assert quantizer.scale is not None and quantizer.zero_point is not None
    shape = (codes.shape[0], codes.shape[1])
    return (codes - channel_view(quantizer.zero_point.float(), shape)) * channel_view(quantizer.scale, shape)


class AdaRound(Method):
    name = "adaround"
    stage = "refine"
    description = "learned rounding of the weights, layer by layer (Nagel et al. 2020)"
    config_type = AdaRoundConfig

    def refine(self, qsim: QuantSim, float_model: nn.Module, calib: Split, config: MethodConfig,
               ctx: StepContext) -> None:
        assert isinstance(config, AdaRoundConfig)
        generator = torch.Generator().manual_seed(ctx.seed)

        def fit(data: LayerData) -> dict[str, float]:
            codes, stats = round_layer(data, config, generator)
            weight = qsim.layer_weight(data.name)
            qsim.set_deployed_weight(data.name, deployed_weight(codes, data).reshape(weight.shape))
            return stats

        ctx.notes[self.name] = fit_layers(qsim, calib, fit, images=config.images, positions=config.positions,
                                          before="loss_nearest", after="loss_adaround", seed=ctx.seed,
                                          batch_size=min(ctx.batch_size, 32), reporter=ctx.reporter,
                                          description="adaround (layers)")


@hookimpl
def mqbench_register_methods(register: Registry[Method]) -> None:
    register(AdaRound())
