"""XNNPACK's arithmetic where it is not ONNX Runtime's: the bias codes a PT2E graph's float32 bias becomes, the
fixed-point add, the mean's multiplier; the machines the simulation models."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from mqbench.backends.ort import mlas
from mqbench.backends.xnnpack import (
    INT32_MAX,
    INT32_MIN,
    add_multipliers,
    converter_bias_codes,
    mean_multiplier,
    simulation_unsupported,
    xnnpack_add,
    xnnpack_global_mean,
)

SCALES = st.floats(min_value=1e-9, max_value=1e-2, allow_nan=False, allow_infinity=False)


@given(code=st.integers(-(2 ** 23), 2 ** 23), x_scale=SCALES, w_scale=SCALES)
def test_a_bias_on_its_grid_comes_back_as_its_code(code: int, x_scale: float, w_scale: float) -> None:
    """Below 2**23 the float32 bias ``code * scale`` holds the code exactly enough to round back to it."""
    sx, sw = torch.tensor(x_scale), torch.tensor([w_scale])
    bias = torch.tensor([float(code)]) * (sx * sw)
    assert converter_bias_codes(bias, sx, sw).item() == code


def test_codes_beyond_float32_precision_and_int32_range() -> None:
    sx, sw = torch.tensor(1.0), torch.tensor([1.0, 1.0, 1.0])
    codes = torch.tensor([2.0 ** 25 + 1, -3e9, 3e9], dtype=torch.float64)
    got = converter_bias_codes(codes.float(), sx, sw)
    # 2**25 + 1 has no float32: the bias holds 2**25 (float32 rounds to even), and so does the code
    assert got.tolist() == [2.0 ** 25, INT32_MIN, INT32_MAX]


def test_the_simulation_models_x86_64_only() -> None:
    assert simulation_unsupported("x86_64") is None and simulation_unsupported("AMD64") is None
    reason = simulation_unsupported("aarch64")
    assert reason is not None and "rndnu" in reason


def test_add_multipliers_keep_21_bits_of_the_larger_ratio() -> None:
    one = torch.tensor(1.0)
    assert add_multipliers(torch.tensor(0.5), torch.tensor(0.25), one) == (2 ** 20, 2 ** 19, 21)
    a, b, shift = add_multipliers(torch.tensor(0.3), torch.tensor(1.7), one)
    assert 2 ** 20 <= b < 2 ** 21 and shift == 20 and a == round(0.30000001192092896 * 2 ** 20)


def test_the_add_rounds_half_up_where_onnx_runtime_rounds_half_to_even() -> None:
    """0.5 * 1 + 0.5 * 0: XNNPACK's fixed point gives 1 (half up), ONNX Runtime's float32 QLinearAdd 0 (half to even)."""
    half, one = torch.tensor(0.5), torch.tensor(1.0)
    a, b = torch.tensor([1.0, -1.0, 3.0]), torch.tensor([0.0, 0.0, 0.0])
    got = xnnpack_add(a, half, 0, b, half, 0, one, 0, qmin=-128, qmax=127)
    onnx_runtime = mlas.qlinear_add(a, half, 0, b, half, 0, one, 0, qmin=-128, qmax=127)
    assert got.tolist() == [1.0, 0.0, 2.0] and onnx_runtime.tolist() == [0.0, -0.0, 2.0]


@given(a=st.integers(-128, 127), b=st.integers(-128, 127), za=st.integers(-128, 127), zb=st.integers(-128, 127),
       zy=st.integers(-128, 127), sa=SCALES, sb=SCALES, ratio=st.floats(0.1, 8.0))
def test_the_add_is_within_one_code_of_the_exact_sum(a: int, b: int, za: int, zb: int, zy: int, sa: float, sb: float,
                                                      ratio: float) -> None:
    sy = max(sa, sb) * ratio  # both ratios within XNNPACK's [2**-10, 2**8)
    sa_, sb_, sy_ = torch.tensor(sa), torch.tensor(sb), torch.tensor(sy)
    got = xnnpack_add(torch.tensor([float(a)]), sa_, za, torch.tensor([float(b)]), sb_, zb, sy_, zy, qmin=-128, qmax=127)
    exact = (a - za) * (float(sa_) / float(sy_)) + (b - zb) * (float(sb_) / float(sy_)) + zy
    assert abs(float(got) - min(max(exact, -128), 127)) <= 1.0


def test_the_mean_multiplier_is_not_onnx_runtime_s() -> None:
    """(s_x / s_y) * (1 / n) and s_x / (s_y * n) in float32 part ways: found by search, one float32 step apart."""
    sx, sy = torch.tensor(0.08054187148809433), torch.tensor(0.03729814663529396)
    assert float(mean_multiplier(sx, sy, 49)) == 0.044069528579711914
    assert float(mlas.pool_multiplier(sx, sy, 49)) == 0.044069524854421616
    c = torch.full((1, 1, 7, 7), 100.0)
    c[0, 0, 0, 0] = 90.0  # centred codes summing to 4890: 215.4999... by ONNX Runtime's multiplier, 215.5000... by XNNPACK's
    got = xnnpack_global_mean(c, sx, sy, -100, qmin=-128, qmax=127)
    onnx_runtime = mlas.global_average_pool(c, sx, 0, sy, -100, qmin=-128, qmax=127, centered=True)
    assert float(got) == 216.0 and float(onnx_runtime) == 215.0  # centred codes
