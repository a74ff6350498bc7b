"""MSQE's scale has the least squared error among its candidates (and beats minmax); LSQ and TQT lower a
layer's reconstruction error, TQT's scales stay powers of two."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mqbench.data.synthetic import generate
from mqbench.methods.learned_scale import LearnedScaleConfig, TQTConfig, learn_scale, msqe_rounded_scale
from mqbench.methods.msqe import error_weights, gradient_second_moments
from mqbench.quant import functional as Q
from mqbench.quant.estimators import Grid, msqe_range, msqe_scale, outlier_mask
from mqbench.quant.qsim import Quantizer, QuantSim
from mqbench.quant.reconstruction import LayerData, layer_rows
from mqbench.schemes import parse_scheme


def _sqe(w: torch.Tensor, scale: torch.Tensor, grid: Grid) -> torch.Tensor:
    qmin, qmax = Q.quant_range(grid.bits, grid.signed)
    return ((torch.clamp(torch.round(w / scale.view(-1, 1)), qmin, qmax) * scale.view(-1, 1) - w) ** 2).sum(1)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([3, 4, 8]), st.booleans())
def test_msqe_scale_is_the_least_error_among_candidates(seed: int, bits: int, pow2: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 200, generator=g) * torch.rand(3, 1, generator=g)
    w[:, 0] *= 8  # an outlier per row, as in depthwise layers
    grid = Grid(bits, True, True, pow2)
    counts = torch.ones_like(w)
    best = msqe_scale(w, counts, grid)
    err = _sqe(w, best, grid)
    qmax = Q.quant_range(bits, True)[1]
    top = w.abs().amax(1) / qmax
    if pow2:
        assert torch.equal(best, torch.exp2(torch.log2(best).round()))
        others = [torch.exp2(torch.ceil(torch.log2(top)) - k) for k in range(16)]
    else:
        others = [top * k / 100 for k in range(1, 101)]
    for other in others:
        assert bool((err <= _sqe(w, other, grid) * (1 + 1e-6)).all())
    # The scale the quantizer derives from msqe_range is msqe's scale (exactly for powers of two).
    lo, hi = msqe_range(w, counts, grid)
    scale, _ = Q.qparams_from_range(lo, hi, bits=bits, symmetric=True, signed=True, power_of_two=pow2)
    assert torch.allclose(scale, best, rtol=1e-6)


def _layer(bits: int, pow2: bool) -> LayerData:
    torch.manual_seed(0)
    weight = torch.randn(1, 16, 32)
    weight[0, :, 0] *= 6
    quantizer = Quantizer("layer", "weight", bits, True, True, pow2, 0)
    amax = weight[0].abs().amax(1)
    quantizer.set_range(-amax, amax)
    x = (torch.randn(2048, 8) @ torch.randn(8, 32)).unsqueeze(1)
    return LayerData("layer", weight, None, quantizer, x, layer_rows(x, weight, None), None)


def test_lsq_and_tqt_lower_the_reconstruction_error() -> None:
    for method, pow2 in (("lsq", False), ("tqt", True)):
        data = _layer(4, pow2)
        scale, stats = learn_scale(data, method, TQTConfig(iterations=200, batch_rows=512)
                                   if pow2 else LearnedScaleConfig(iterations=200, batch_rows=512),
                                   torch.Generator().manual_seed(0))
        assert scale.shape == (16,)
        if not pow2:
            assert stats["loss_learned"] < 0.9 * stats["loss_initial"], (method, stats)
            continue
        assert torch.equal(scale, torch.exp2(torch.log2(scale).round()))
        # Without an activation the loss is a sum over output channels, so the best power-of-two scale of
        # each channel can be found by brute force. TQT's straight-through gradient through ceil() is a
        # local surrogate of a piecewise-constant loss: measured 225 against the optimum 172 (start 236).
        qmin, qmax = data.quantizer.qmin, data.quantizer.qmax
        w, x = data.weight[0], data.x_rows[:, 0]
        best = torch.full((16,), float("inf"))
        for e in range(-12, 4):
            wq = torch.clamp(torch.round(w / 2.0 ** e), qmin, qmax) * 2.0 ** e
            best = torch.minimum(best, ((x @ (wq - w).T) ** 2).mean(0))
        assert stats["loss_learned"] < stats["loss_initial"]
        assert float(best.sum()) <= stats["loss_learned"] < 0.97 * stats["loss_initial"], (stats, float(best.sum()))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 4.0))
def test_outlier_mask_keeps_exactly_the_weights_within_sigma_std(seed: int, sigma: float) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 300, generator=g) * torch.rand(4, 1, generator=g)
    mask = outlier_mask(w, sigma)
    threshold = sigma * w.std(1, keepdim=True)
    assert torch.equal(mask.bool(), w.abs() <= threshold)
    assert torch.equal(outlier_mask(w, 0.0), torch.ones_like(w))


def test_outlier_mask_lets_the_bulk_choose_the_scale() -> None:
    # A depthwise-like channel: a bulk of small weights and one weight 40x larger. Unmasked, MSQE spends
    # its 4-bit grid on the outlier and rounds most of the bulk to zero; masked (2 sigma, the authors'
    # default) the scale fits the bulk and the outlier is clipped. Among the unmasked weights the masked
    # scale has the lower error, and its choice does not depend on how large the outlier is.
    g = torch.Generator().manual_seed(0)
    bulk = torch.randn(1, 255, generator=g) * 0.05
    grid = Grid(4, True, True, True)
    scales = []
    for outlier in (2.0, 20.0):
        w = torch.cat([bulk, torch.tensor([[outlier]])], 1)
        plain = msqe_scale(w, torch.ones_like(w), grid)
        masked = msqe_scale(w, error_weights(outlier_mask(w, 2.0), None), grid)
        assert float(masked) < float(plain)
        assert float(_sqe(bulk, masked, grid)) < 0.5 * float(_sqe(bulk, plain, grid))
        scales.append(float(masked))
    assert scales[0] == scales[1]


def test_error_weights_combine_moments_and_mask_and_never_empty_a_row() -> None:
    w = torch.tensor([[0.1, -0.2, 0.15, 5.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    moments = torch.tensor([[4.0, 1.0, 0.0, 9.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    weights = error_weights(outlier_mask(w, 1.0), moments)
    assert torch.equal(weights[0], torch.tensor([2.0, 1.0, 0.0, 0.0]))  # sqrt(E g^2), outlier masked
    assert torch.equal(weights[1], torch.ones(4))  # all-zero channel: every |w| <= 0 is kept
    assert torch.equal(weights[2], torch.ones(4))  # zero gradients everywhere: counted equally, not dropped


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([3, 4, 8]), st.booleans())
def test_weighted_msqe_scale_is_the_least_weighted_error(seed: int, bits: int, pow2: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 200, generator=g) * torch.rand(3, 1, generator=g)
    weights = torch.rand(3, 200, generator=g) * (torch.rand(3, 200, generator=g) > 0.1)
    grid = Grid(bits, True, True, pow2)
    best = msqe_scale(w, weights, grid)
    qmin, qmax = Q.quant_range(bits, True)

    def err(scale: torch.Tensor) -> torch.Tensor:
        s = scale.view(-1, 1)
        return (((torch.clamp(torch.round(w / s), qmin, qmax) * s - w) ** 2) * weights).sum(1)

    top = torch.where(weights > 0, w.abs(), torch.zeros_like(w)).amax(1) / qmax
    others = ([torch.exp2(torch.ceil(torch.log2(top)) - k) for k in range(16)] if pow2
              else [top * k / 100 for k in range(1, 101)])
    for other in others:
        assert bool((err(best) <= err(other) * (1 + 1e-6)).all())


def test_gradient_second_moments_are_the_mean_squared_batch_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    calib = generate(0, "calib", 12)
    qsim = QuantSim.from_float(model, parse_scheme("w4-pc"))
    flag = qsim.layer_weight("0").requires_grad
    moments = gradient_second_moments(qsim, calib, images=10, batch_size=4)  # batches of 4, 4, 2
    assert qsim.layer_weight("0").requires_grad == flag
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters() if name.endswith("weight")}
    for start in (0, 4, 8):
        x = calib.normalize(calib.images[start:min(start + 4, 10)])
        model.zero_grad()
        logits = model(x)
        F.cross_entropy(logits, logits.argmax(1)).backward()
        for name, p in model.named_parameters():
            if name in expected:
                assert p.grad is not None
                expected[name] += p.grad ** 2 / 3
    assert set(moments) == {"0", "4"}
    assert torch.allclose(moments["0"], expected["0.weight"], rtol=1e-4, atol=1e-12)
    assert torch.allclose(moments["4"], expected["4.weight"], rtol=1e-4, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_msqe_rounding_picks_the_lower_error_octave_and_passes_the_gradient(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(1, 6, 20, generator=g) * torch.rand(1, 6, 1, generator=g)
    level = (torch.log2(weight.abs().amax(2, keepdim=True)) + torch.rand(1, 6, 1, generator=g) - 0.5)
    param = level.clone().requires_grad_(True)
    scale = msqe_rounded_scale(param, weight, 4, -8, 7)
    exponent = torch.log2(scale.detach()) + 3
    assert torch.equal(exponent, exponent.round())
    assert bool(((exponent == level.floor()) | (exponent == level.ceil())).all())
    inside = weight.abs() <= torch.exp2(level - 3) * 7.5
    for other in (level.floor(), level.ceil()):
        s_other = torch.exp2(other - 3)
        e_other = (((torch.clamp(torch.round(weight / s_other), -8, 7) * s_other - weight) ** 2) * inside).sum(2)
        e_best = (((torch.clamp(torch.round(weight / scale.detach()), -8, 7) * scale.detach() - weight) ** 2)
                  * inside).sum(2)
        assert bool((e_best <= e_other * (1 + 1e-6)).all())
    scale.sum().backward()
    assert param.grad is not None and bool((param.grad > 0).all())  # straight-through: d scale / d level > 0
