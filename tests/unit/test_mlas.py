"""mqbench.backends.ort.mlas reproduces ONNX Runtime's x86 integer kernels bit for bit: each function against the
operator run by onnxruntime on the same codes and qparams (single-operator graphs), for random qparams."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mqbench.backends.ort import mlas
from mqbench.backends.ort.runtime import cpu_isa

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(
    mlas.supported_isa(cpu_isa()) is not None,
    reason=f"ONNX Runtime's kernels here are not the modelled x86-64 AVX2 ones ({platform.machine()})")

scales = st.floats(0.002, 0.3, allow_nan=False).map(np.float32)
codes_u8 = st.integers(0, 255)


def _run(node: object, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray]) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper

    types = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.float32): TensorProto.FLOAT}
    graph = helper.make_graph(
        [node], "one_op", [helper.make_tensor_value_info(k, types[v.dtype], v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, inputs)[0])


def _qlinear_add_onnx(a: np.ndarray, sa: np.float32, za: int, b: np.ndarray, sb: np.float32, zb: int,
                      sc: np.float32, zc: int) -> np.ndarray:
    from onnx import helper

    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["y"], domain="com.microsoft")
    return _run(node, {"a": a, "b": b}, {"sa": np.array(sa), "za": np.array(za, np.uint8), "sb": np.array(sb),
                                         "zb": np.array(zb, np.uint8), "sc": np.array(sc), "zc": np.array(zc, np.uint8)})


EVERY_PAIR = (np.repeat(np.arange(256, dtype=np.uint8), 256), np.tile(np.arange(256, dtype=np.uint8), 256))


@settings(max_examples=15, deadline=None)
@given(scales, scales, scales, codes_u8, codes_u8, codes_u8)
def test_qlinear_add_matches_onnxruntime_on_every_pair_of_codes(sa: np.float32, sb: np.float32, sc: np.float32,
                                                                 za: int, zb: int, zc: int) -> None:
    a, b = EVERY_PAIR
    expected = _qlinear_add_onnx(a, sa, za, b, sb, zb, sc, zc)
    got = mlas.qlinear_add(torch.tensor(a).float(), torch.tensor(sa), za, torch.tensor(b).float(), torch.tensor(sb), zb,
                           torch.tensor(sc), zc, qmin=0, qmax=255)
    np.testing.assert_array_equal(got.numpy(), expected)


# Found by search: qparams where ``zp_c - (r_a * zp_a + r_b * zp_b)`` rounded without the compiler's fused
# multiply-add gives another code than the kernel for one pair of codes.
CONTRACTION_CASES = [(0.18298733, 0.12329397, 0.14725183, 208, 161, 139, 80, 219, 29),
                     (0.076196484, 0.02557158, 0.12767608, 241, 195, 237, 12, 76, 76),
                     (0.17818308, 0.04904454, 0.029288167, 199, 73, 205, 122, 236, 9)]


@pytest.mark.parametrize(("sa", "sb", "sc", "za", "zb", "zc", "a", "b", "c"), CONTRACTION_CASES)
def test_qlinear_add_reproduces_the_kernels_contracted_fixed_part(sa: float, sb: float, sc: float, za: int, zb: int,
                                                                  zc: int, a: int, b: int, c: int) -> None:
    s = [np.float32(v) for v in (sa, sb, sc)]
    # 64 copies: a one-element input takes the kernel's broadcast path, which adds without fusing.
    onnx_c = _qlinear_add_onnx(np.full(64, a, np.uint8), s[0], za, np.full(64, b, np.uint8), s[1], zb, s[2], zc)
    assert set(onnx_c.tolist()) == {c}
    got = mlas.qlinear_add(torch.tensor([float(a)]), torch.tensor(s[0]), za, torch.tensor([float(b)]),
                           torch.tensor(s[1]), zb, torch.tensor(s[2]), zc, qmin=0, qmax=255)
    assert int(got[0]) == c
    # The uncontracted formula misses this code: the test can tell the two apart.
    ra, rb = torch.tensor(s[0]) / torch.tensor(s[2]), torch.tensor(s[1]) / torch.tensor(s[2])
    plain = torch.tensor(float(zc)) - (ra * za + rb * zb)
    v = mlas._fma_f32(torch.tensor([float(a)]), ra, mlas._fma_f32(torch.tensor([float(b)]), rb, plain))
    assert int(torch.round(v)[0]) != c


@settings(max_examples=20, deadline=None)
@given(scales, codes_u8, scales, codes_u8, st.integers(0, 2 ** 31 - 1), st.booleans())
def test_qlinear_conv_requantization_matches_onnxruntime(sx: np.float32, zx: int, sy: np.float32, zy: int, seed: int,
                                                         depthwise: bool) -> None:
    from onnx import helper

    rng = np.random.default_rng(seed)
    channels, groups = 16, (16 if depthwise else 1)
    sw = rng.uniform(0.0005, 0.02, channels).astype(np.float32)
    x = rng.integers(0, 256, (2, channels, 9, 9)).astype(np.uint8)
    w = rng.integers(-127, 128, (channels, channels // groups, 3, 3)).astype(np.int8)
    bias = rng.integers(-30000, 30000, channels).astype(np.int32)
    node = helper.make_node("QLinearConv", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy", "b"], ["y"], group=groups,
                            pads=[1, 1, 1, 1])
    expected = _run(node, {"x": x}, {"sx": np.array(sx), "zx": np.array(zx, np.uint8), "w": w, "sw": sw,
                                     "zw": np.zeros(channels, np.int8), "sy": np.array(sy),
                                     "zy": np.array(zy, np.uint8), "b": bias})
    acc = torch.nn.functional.conv2d(torch.tensor(x).double() - zx, torch.tensor(w).double(),
                                     torch.tensor(bias).double(), padding=1, groups=groups)
    if not depthwise and mlas.sums_pairs_in_int16(cpu_isa()):  # the U8S8 GEMM saturates pairs (no VNNI)
        cols = torch.nn.functional.unfold(torch.tensor(x).float() - zx, 3, padding=1) + zx  # pads with zx
        cols = cols.view(2, channels, 9, -1).transpose(1, 2).reshape(2, 9 * channels, -1)  # NHWC im2col order
        excess = mlas.int16_pair_excess(cols, torch.tensor(w).float().permute(0, 2, 3, 1).flatten(1))
        assert excess is not None
        acc = acc + excess.double().view(acc.shape)
    multiplier = mlas.conv_multiplier(torch.tensor(sx), torch.tensor(sw), torch.tensor(sy)).view(1, -1, 1, 1)
    np.testing.assert_array_equal(mlas.requantize(acc, multiplier, zy, qmin=0, qmax=255).numpy(), expected)


@settings(max_examples=20, deadline=None)
@given(scales, codes_u8, scales, codes_u8, st.integers(0, 2 ** 31 - 1), st.sampled_from([(7, 7), (1, 1), (13, 5)]))
def test_global_average_pool_matches_onnxruntime(sx: np.float32, zx: int, sy: np.float32, zy: int, seed: int,
                                                 size: tuple[int, int]) -> None:
    from onnx import helper

    x = np.random.default_rng(seed).integers(0, 256, (2, 40, *size)).astype(np.uint8)
    node = helper.make_node("QLinearGlobalAveragePool", ["x", "sx", "zx", "sy", "zy"], ["y"], domain="com.microsoft",
                            channels_last=0)
    expected = _run(node, {"x": x}, {"sx": np.array(sx), "zx": np.array(zx, np.uint8), "sy": np.array(sy),
                                     "zy": np.array(zy, np.uint8)})
    got = mlas.global_average_pool(torch.tensor(x).float(), torch.tensor(sx), zx, torch.tensor(sy), zy, qmin=0, qmax=255)
    np.testing.assert_array_equal(got.numpy(), expected)


@settings(max_examples=20, deadline=None)
@given(scales, codes_u8, st.integers(0, 2 ** 31 - 1))
def test_quantize_linear_divides_and_rounds_ties_to_even_as_onnxruntime(scale: np.float32, zero_point: int,
                                                                       seed: int) -> None:
    from onnx import helper

    rng = np.random.default_rng(seed)
    steps = rng.integers(-300, 300, 4000) + rng.choice([0.0, 0.5, -0.5, 0.49999, 0.50001], 4000)
    x = (steps * scale).astype(np.float32)  # many values on or next to a rounding tie
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    expected = _run(node, {"x": x}, {"s": np.array(scale), "z": np.array(zero_point, np.uint8)})
    got = mlas.quantize_linear(torch.tensor(x), torch.tensor(scale), zero_point, qmin=0, qmax=255)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_bias_codes_are_the_float64_quotient_of_the_float32_scale_product() -> None:
    bias = torch.tensor([0.5, -1.25, 3.0])
    x_scale, w_scale = torch.tensor(0.1), torch.tensor([0.01, 0.02, 0.03])
    scale = (np.float32(0.1) * np.array([0.01, 0.02, 0.03], np.float32)).astype(np.float64)
    expected = np.round(np.array([0.5, -1.25, 3.0]) / scale)
    np.testing.assert_array_equal(mlas.bias_codes(bias, x_scale, w_scale).numpy(), expected)
    assert float(mlas.bias_codes(torch.tensor([1e9]), torch.tensor(1e-3), torch.tensor(1e-3))[0]) == 2 ** 31 - 1


def test_unsupported_machines_are_named() -> None:
    assert mlas.supported_isa(["sse2"]) is not None and "AVX2" in str(mlas.supported_isa(["sse2"]))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 40))
def test_int16_pair_excess_is_what_saturating_every_pair_takes_off(seed: int, k: int) -> None:
    """Against the brute force: every pair of products summed and saturated (the hot-pair selection and the
    chunking change nothing)."""
    rng = np.random.default_rng(seed)
    cols = torch.tensor(rng.integers(0, 256, (3, k, 5))).float()
    w = torch.tensor(rng.choice([-128, -127, -100, -64, 0, 64, 100, 127], (7, k))).float()
    padded_cols = torch.nn.functional.pad(cols, (0, 0, 0, k % 2))
    padded_w = torch.nn.functional.pad(w, (0, k % 2))
    products = padded_cols.unsqueeze(1) * padded_w.view(1, 7, -1, 1)  # (N, C, K, L)
    pairs = products[:, :, 0::2] + products[:, :, 1::2]
    expected = (pairs.clamp(-32768, 32767) - pairs).sum(2)
    got = mlas.int16_pair_excess(cols, w, chunk=3)
    assert torch.equal(torch.zeros_like(expected) if got is None else got, expected)
    assert got is not None or not bool(expected.any())
