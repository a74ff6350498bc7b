"""openvino: the QuantSim's QDQ ONNX on OpenVINO's CPU plugin runs its convolutions on int8 kernels, in f32 where
it is not int8, and the record names what ran in float; plus the two facts of OpenVINO's arithmetic the README's
agreement figures rest on (rounding of ties, the convolution's requantization)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from mqbench.backends.openvino import OpenVinoCPU, compile_onnx, executed_kernels
from mqbench.backends.ort.mlas import int16_pair_excess, sums_pairs_in_int16
from mqbench.backends.ort.runtime import cpu_isa
from mqbench.metrics.accuracy import agreement
from mqbench.models.builtin import quick_mobilenet_v1
from mqbench.schemes import parse_scheme
from tests.unit.test_ort_int8 import _calibrated, _trained_like

pytest.importorskip("openvino")


@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_every_convolution_runs_an_int8_kernel_and_agrees_with_the_simulation(scheme: str) -> None:
    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(quick_mobilenet_v1(10)), scheme)
    deployed = OpenVinoCPU(threads=1).deploy(qsim)
    out = deployed(x)
    info = deployed.deployment_info()  # type: ignore[attr-defined]
    (kernels,) = info.values()
    convs = sum(isinstance(m, nn.Conv2d) for m in qsim.modules())
    int8_convs = sum(n for k, n in kernels["kernels"].items() if k.startswith("Convolution/") and k.endswith("/u8"))
    assert int8_convs == convs, kernels
    assert kernels["float_compute_ops"] == {}, kernels
    with torch.no_grad():
        simulated = qsim(x)
    result = agreement(simulated, out)
    # Measured on AVX2 without VNNI: 64/64 images agree, logit SQNR 16.7 dB (w8a8-pc) / 16.0 dB (w8a8-pt) on
    # this random net (its full-range codes saturate pairs of products, test_convolution_requantizes_...).
    assert result["top1_agreement"] >= 0.95, result
    assert result["logit_sqnr_db"] is not None and result["logit_sqnr_db"] > 15, result


def test_float_model_runs_in_float32_not_bf16() -> None:
    torch.manual_seed(0)
    model = _trained_like(quick_mobilenet_v1(10))
    x = torch.randn(8, 3, 32, 32)
    deployed = OpenVinoCPU(threads=1).deploy_float(model)
    with torch.no_grad():
        expected = model(x)
    # bf16 (OpenVINO's default on AVX-512 machines) misses by ~1e-2; float32 by rounding only.
    assert torch.allclose(deployed(x), expected, atol=1e-4, rtol=1e-4)
    assert OpenVinoCPU(threads=1).info()["inference_precision"] == "f32"
    compiled = deployed.compiled[tuple(x.shape)]  # type: ignore[attr-defined]
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"


def test_float_layers_of_an_unquantized_graph_are_named() -> None:
    torch.manual_seed(0)
    from mqbench.backends.ort.export import export_onnx

    model = _trained_like(quick_mobilenet_v1(10))
    compiled = compile_onnx(export_onnx(model, torch.randn(1, 3, 32, 32)), (2, 3, 32, 32), threads=1)
    summary = executed_kernels(compiled)
    assert summary["integer_ops"] == 0
    assert summary["float_compute_ops"].get("Convolution", 0) > 0, summary
    assert len(summary["float_layers"]) == sum(summary["float_compute_ops"].values())


def test_size_before_the_first_call_is_an_error_not_a_number() -> None:
    deployed = OpenVinoCPU(threads=1).deploy_float(quick_mobilenet_v1(10).eval())
    with pytest.raises(RuntimeError, match="call it before"):
        deployed.size_bytes()  # type: ignore[attr-defined]


def test_missing_openvino_is_reported_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    reason = OpenVinoCPU().unavailable()
    assert reason is not None and "mqbench[openvino]" in reason
    assert OpenVinoCPU().info()["runtime"] is None


@pytest.mark.parametrize("scheme, reason", [("w4a8", "8-bit"), ("w8a8-pc-asym", "zero points of 0")])
def test_schemes_it_cannot_run_are_refused_with_the_reason(scheme: str, reason: str) -> None:
    message = OpenVinoCPU().check_scheme(parse_scheme(scheme))
    assert message is not None and reason in message


def _qdq_model(nodes: list, inits: list, inputs: list, outputs: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_openvino_quantizes_as_its_fake_quantize_computes_not_as_onnx_does() -> None:
    """ONNX QuantizeLinear is ``round_half_even(x / scale) + zero_point``; OpenVINO runs it as a FakeQuantize:
    ``round_half_even(x * a + b)`` in float32, ``a = 255 / (hi - lo)``, ``b = -lo * a``. TF MobileNets feed
    ``p / 127.5 - 1`` at scale 1/127.5, zero point 127, which puts nearly every pixel near a tie: the two forms
    then part on a third of the 256 pixel values (scripts/openvino_arithmetic.py: 22% of real input codes)."""
    scale, zp = np.float32(1 / 127.5), np.uint8(127)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.array(scale), "s"), numpy_helper.from_array(np.array(zp), "z")]
    model = _qdq_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])])
    x = (np.arange(256, dtype=np.float32) / np.float32(127.5) - 1).reshape(1, 256)  # p / 127.5 - 1
    compiled = compile_onnx(model, (1, 256), threads=1)
    codes = np.round(compiled(x)[compiled.outputs[0]] / scale).astype(np.int64) + 127
    lo, hi = np.float32(-127) * scale, np.float32(128) * scale
    a = np.float32(255) / (hi - lo)
    fake_quantize = np.clip(np.round(x * a - lo * a), 0, 255).astype(np.int64)
    onnx_form = np.clip(np.round(x / scale) + 127, 0, 255).astype(np.int64)
    assert np.array_equal(codes, fake_quantize)
    assert np.count_nonzero(codes != onnx_form) == 72  # measured; each by one code


def test_convolution_requantizes_as_float_bias_then_the_fake_quantize_scale() -> None:
    """The int8 convolution's output code is ``round((float(acc) * s_x * s_w + bias) * (255 / (hi - lo)))`` in
    float32, with ``bias`` the int32 bias dequantized and ``lo, hi`` the output FakeQuantize's range: exact on all
    of 131,072 codes (ONNX Runtime's ``acc_with_bias * (s_x * s_w / s_y)`` misses some). Without VNNI the
    accumulator saturates pairs of products as ONNX Runtime's U8S8 kernels do (measured on AVX2: 25,910 codes
    differ from the exact sums'); with AVX512-VNNI it is exact."""
    rng = np.random.default_rng(0)
    c_in, c_out, n = 32, 64, 32
    xs, xz, ys = np.float32(0.0213), np.uint8(117), np.float32(0.0371)
    ws = rng.uniform(0.001, 0.01, c_out).astype(np.float32)
    w = rng.integers(-127, 128, (c_out, c_in, 1, 1)).astype(np.int8)
    b = rng.integers(-3000, 3000, c_out).astype(np.int32)
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["y"]), helper.make_node("Relu", ["y"], ["yr"]),
             helper.make_node("QuantizeLinear", ["yr", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    arrays = {"xs": np.array(xs), "xz": np.array(xz), "w": w, "ws": ws, "wz": np.zeros(c_out, np.int8), "b": b,
              "bs": (xs * ws).astype(np.float32), "bz": np.zeros(c_out, np.int32), "ys": np.array(ys),
              "yz": np.array(np.uint8(0))}
    model = _qdq_model(nodes, [numpy_helper.from_array(v, k) for k, v in arrays.items()],
                       [helper.make_tensor_value_info("xq", TensorProto.UINT8, [n, c_in, 8, 8])],
                       [helper.make_tensor_value_info("out", TensorProto.FLOAT, [n, c_out, 8, 8])])
    xq = rng.integers(0, 256, (n, c_in, 8, 8)).astype(np.uint8)
    compiled = compile_onnx(model, (n, c_in, 8, 8), threads=1)
    codes = torch.from_numpy(np.round(compiled(xq)[compiled.outputs[0]] / ys))
    acc = torch.einsum("nchw,kc->nkhw", torch.from_numpy(xq.astype(np.float64)) - float(xz),
                       torch.from_numpy(w[:, :, 0, 0].astype(np.float64)))
    if sums_pairs_in_int16(cpu_isa()):  # no VNNI: adjacent input channels' products summed in int16, saturated
        excess = int16_pair_excess(torch.from_numpy(xq.astype(np.float32)).flatten(2),
                                   torch.from_numpy(w[:, :, 0, 0].astype(np.float32)))
        assert excess is not None
        acc = acc + excess.double().view(acc.shape)
    acc = acc.float()
    s = torch.from_numpy(xs * ws).view(1, -1, 1, 1)
    bias = (torch.from_numpy(b).float() * torch.from_numpy(xs * ws)).view(1, -1, 1, 1)
    lo, hi = torch.tensor(0.0), torch.tensor(np.float32(255) * ys)
    predicted = ((acc * s + bias).clamp(min=0) * (torch.tensor(255.0) / (hi - lo))).round().clamp(0, 255)
    assert torch.equal(predicted, codes)
