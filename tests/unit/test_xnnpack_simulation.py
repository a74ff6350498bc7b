"""XNNPACK's bias codes (``converter_bias_codes``): the int32 codes a PT2E graph's float32 bias becomes, and where
they part from the QuantSim's own codes; the machines the simulation models."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from mqbench.backends.xnnpack import INT32_MAX, INT32_MIN, converter_bias_codes, simulation_unsupported

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
