"""Property tests of the pure quantization functions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mqbench.quant import functional as Q

bits_st = st.integers(2, 16)
finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[float, float]:
    a, b = draw(finite), draw(finite)
    return (min(a, b), max(a, b))


def _qp(lo: float, hi: float, bits: int, symmetric: bool, signed: bool, pow2: bool = False):
    return Q.qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits=bits, symmetric=symmetric, signed=signed,
                                power_of_two=pow2)


@settings(max_examples=300, deadline=None)
@given(r=ranges(), bits=bits_st, symmetric=st.booleans(), signed=st.booleans(), pow2=st.booleans(),
       u=st.lists(st.floats(0, 1), min_size=1, max_size=64))
def test_round_trip_error_at_most_half_a_step_inside_the_range(r, bits, symmetric, signed, pow2, u) -> None:
    lo, hi = r
    if symmetric and not signed:
        lo = max(lo, 0.0)  # unsigned symmetric covers [0, amax] only (post-ReLU tensors)
        hi = max(hi, lo)
    scale, zp = _qp(lo, hi, bits, symmetric, signed, pow2)
    qmin, qmax = Q.quant_range(bits, signed)
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
    x = torch.tensor([lo0 + (hi0 - lo0) * t for t in u], dtype=torch.float32)
    y = Q.fake_quantize(x, scale, zp, qmin=qmin, qmax=qmax)
    tol = float(scale) / 2 * (1 + 1e-4) + 1e-6 * max(abs(lo0), abs(hi0), 1.0)
    assert float((y - x).abs().max()) <= tol


@settings(max_examples=200, deadline=None)
@given(r=ranges(), bits=bits_st, signed=st.booleans(), symmetric=st.booleans(), far=st.floats(1.5, 100))
def test_values_outside_the_range_clamp_to_the_grid_ends(r, bits, signed, symmetric, far) -> None:
    lo, hi = r
    scale, zp = _qp(lo, hi, bits, symmetric, signed)
    qmin, qmax = Q.quant_range(bits, signed)
    span = max(abs(lo), abs(hi), 1.0)
    x = torch.tensor([-far * span * 10, far * span * 10])
    q = Q.quantize(x, scale, zp, qmin=qmin, qmax=qmax)
    assert q.tolist() == [qmin, qmax]
    d = Q.dequantize(q, scale, zp)
    assert torch.allclose(d, (torch.tensor([qmin, qmax]) - zp).float() * scale)


@given(bits=bits_st, symmetric=st.booleans(), signed=st.booleans(), c=st.sampled_from([0.0, -0.0]),
       shape=st.sampled_from([(), (4,)]))
def test_zero_range_never_divides_by_zero(bits, symmetric, signed, c, shape) -> None:
    t = torch.full(shape, c)
    scale, zp = Q.qparams_from_range(t, t, bits=bits, symmetric=symmetric, signed=signed)
    assert bool((scale > 0).all()) and bool(torch.isfinite(scale).all())
    qmin, qmax = Q.quant_range(bits, signed)
    y = Q.fake_quantize(torch.zeros(*shape, 3), scale, zp, qmin=qmin, qmax=qmax, axis=0 if shape else None)
    assert bool((y == 0).all())


@given(c=finite, bits=bits_st, symmetric=st.booleans())
def test_constant_tensor_is_represented_within_half_a_step(c, bits, symmetric) -> None:
    x = torch.full((16,), c)
    scale, zp = Q.qparams_from_range(x.min(), x.max(), bits=bits, symmetric=symmetric, signed=True)
    qmin, qmax = Q.quant_range(bits, True)
    y = Q.fake_quantize(x, scale, zp, qmin=qmin, qmax=qmax)
    assert torch.isfinite(y).all()
    assert float((y - x).abs().max()) <= float(scale) / 2 * (1 + 1e-4) + 1e-6 * max(abs(c), 1.0)


@pytest.mark.parametrize("fn", ["quantize", "fake_quantize"])
def test_nan_input_raises_a_clear_error(fn) -> None:
    x = torch.tensor([0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="NaN"):
        getattr(Q, fn)(x, torch.tensor(0.1), torch.tensor(0), qmin=0, qmax=255)
    with pytest.raises(ValueError, match="NaN"):
        Q.qparams_from_range(torch.tensor(float("nan")), torch.tensor(1.0), bits=8, symmetric=False, signed=False)


@settings(deadline=None)
@given(bits=bits_st, r=ranges())
def test_power_of_two_scales_are_powers_of_two_and_cover_the_range(bits, r) -> None:
    lo, hi = r
    scale, _ = _qp(lo, hi, bits, True, True, pow2=True)
    exact, _ = _qp(lo, hi, bits, True, True, pow2=False)
    e = math.log2(float(scale))
    assert e == round(e)
    assert float(scale) >= float(exact) * (1 - 1e-6)


@settings(deadline=None)
@given(bits=bits_st, channels=st.integers(1, 8), data=st.data())
def test_per_channel_equals_per_tensor_channel_by_channel(bits, channels, data) -> None:
    vals = data.draw(st.lists(st.lists(finite, min_size=3, max_size=3), min_size=channels, max_size=channels))
    w = torch.tensor(vals, dtype=torch.float32)
    scale, zp = Q.qparams_from_range(w.amin(1), w.amax(1), bits=bits, symmetric=True, signed=True)
    qmin, qmax = Q.quant_range(bits, True)
    per_channel = Q.fake_quantize(w, scale, zp, qmin=qmin, qmax=qmax, axis=0)
    for c in range(channels):
        s, z = Q.qparams_from_range(w[c].min(), w[c].max(), bits=bits, symmetric=True, signed=True)
        assert torch.equal(per_channel[c], Q.fake_quantize(w[c], s, z, qmin=qmin, qmax=qmax))


def test_known_int8_values() -> None:
    # Symmetric int8 max-abs: scale = 1.27 / 127 = 0.01; asymmetric uint8 over [-1, 1.55]: scale 0.01, zp 100.
    s, z = Q.qparams_from_range(torch.tensor(-1.0), torch.tensor(1.27), bits=8, symmetric=True, signed=True)
    assert float(s) == pytest.approx(0.01) and int(z) == 0
    s, z = Q.qparams_from_range(torch.tensor(-1.0), torch.tensor(1.55), bits=8, symmetric=False, signed=False)
    assert float(s) == pytest.approx(0.01) and int(z) == 100
    q = Q.quantize(torch.tensor([-1.0, 0.0, 0.005, 0.015, 1.55]), s, z, qmin=0, qmax=255)
    assert q.tolist() == [0, 100, 100, 102, 255]  # round half to even: 0.5 -> 0, 1.5 -> 2


def test_straight_through_gradient_inside_and_zero_outside() -> None:
    x = torch.tensor([-3.0, 0.3, 0.7, 3.0], requires_grad=True)
    y = Q.fake_quantize(x, torch.tensor(0.1), torch.tensor(0), qmin=-10, qmax=10)
    y.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("bits", [1, 17, 8.0])
def test_bad_bit_width_is_rejected(bits) -> None:
    with pytest.raises(ValueError, match="bits"):
        Q.quant_range(bits, True)


def test_min_above_max_is_rejected() -> None:
    with pytest.raises(ValueError, match="exceed"):
        Q.qparams_from_range(torch.tensor(1.0), torch.tensor(0.0), bits=8, symmetric=False, signed=False)




@settings(max_examples=200, deadline=None)
@given(r=ranges(), bits=bits_st, symmetric=st.booleans(), signed=st.booleans(), per_channel=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fused_inference_path_equals_the_reference_arithmetic(r, bits, symmetric, signed, per_channel, seed) -> None:
    """fake_quantize without gradients uses torch's fused kernels; it must equal the unfused formula
    (which the gradient path uses) exactly."""
    lo, hi = r
    if symmetric and not signed:
        lo, hi = max(lo, 0.0), max(hi, 0.0)
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(3, 5, generator=g) * 1.2 - 0.1 * (hi - lo)
    if per_channel:
        scale, zp = Q.qparams_from_range(torch.full((3,), lo), torch.full((3,), hi), bits=bits, symmetric=symmetric,
                                         signed=signed)
    else:
        scale, zp = _qp(lo, hi, bits, symmetric, signed)
    qmin, qmax = Q.quant_range(bits, signed)
    axis = 0 if per_channel else None
    fused = Q.fake_quantize(x, scale, zp, qmin=qmin, qmax=qmax, axis=axis)
    unfused = Q.fake_quantize(x.clone().requires_grad_(True), scale, zp, qmin=qmin, qmax=qmax, axis=axis).detach()
    assert torch.equal(fused, unfused)
    assert torch.equal(Q.dequantize(Q.quantize(x, scale, zp, qmin=qmin, qmax=qmax, axis=axis), scale, zp, axis=axis),
                       fused)


@settings(max_examples=300, deadline=None)
@given(r=ranges(), bits=st.integers(2, 8), symmetric=st.booleans(), signed=st.booleans(), seed=st.integers(0, 2**16),
       spread=st.floats(1.0, 4.0))
def test_vectorised_per_tensor_fake_quantize_equals_torchs_kernel_bit_for_bit(r, bits, symmetric, signed, seed,
                                                                               spread) -> None:
    """The inference path (the QuantSim's activations) computes what torch.fake_quantize_per_tensor_affine does,
    on values inside and far outside the range and on exact rounding ties."""
    lo, hi = r
    if symmetric and not signed:
        lo, hi = max(lo, 0.0), max(hi, 0.0)
    scale, zp = _qp(lo, hi, bits, symmetric, signed)
    qmin, qmax = Q.quant_range(bits, signed)
    g = torch.Generator().manual_seed(seed)
    mid, half = (lo + hi) / 2, max(hi - lo, 1e-3) / 2 * spread
    x = mid + half * (2 * torch.rand(4096, generator=g) - 1)
    ties = (torch.arange(qmin - zp.item() - 2, qmax - zp.item() + 2, dtype=torch.float32) + 0.5) * scale
    x = torch.cat([x, ties, -ties, torch.tensor([0.0, -0.0, 3e38, -3e38])])
    ours = Q.fake_quantize_per_tensor_inference(x, scale, int(zp), qmin=qmin, qmax=qmax)
    torchs = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)
    assert torch.equal(ours, torchs)


def test_nan_propagates_per_tensor_when_the_caller_does_not_check() -> None:
    """check_finite=False: a NaN stays NaN (the evaluation refuses it at the logits) instead of becoming a code, as
    torch's kernel would make it; per channel, where torch's kernel is used, the check is never skipped."""
    x = torch.tensor([0.5, float("nan"), 1.0])
    y = Q.fake_quantize(x, torch.tensor(0.1), torch.tensor(0), qmin=0, qmax=255, check_finite=False)
    assert torch.isnan(y).tolist() == [False, True, False]
    assert torch.fake_quantize_per_tensor_affine(x, 0.1, 0, 0, 255).isfinite().all()  # what the check guards against
    with pytest.raises(ValueError, match="NaN"):
        Q.fake_quantize(x.view(3, 1), torch.full((3,), 0.1), torch.zeros(3, dtype=torch.int64), qmin=0, qmax=255,
                        axis=0, check_finite=False)
