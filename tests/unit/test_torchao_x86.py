"""torchao-x86: the QuantSim written as an X86 Inductor PT2E graph compiles onto oneDNN's int8 kernels (every
convolution and the classifier, nothing left in float), computes what the QuantSim computes, pads a leftover batch
without changing any image's logits, records its kernels and compile seconds, and refuses what it cannot run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mqbench.backends.ort.runtime import cpu_isa
from mqbench.backends.pt2e import X86_INDUCTOR, pt2e_module
from mqbench.backends.torchao_x86 import (
    InductorModel,
    OneDnnRequantize,
    TorchaoX86,
    kernels_called,
    simulation_unsupported,
)
from mqbench.metrics.accuracy import agreement
from mqbench.metrics.latency import torch_threads
from mqbench.models.builtin import quick_mobilenet_v2
from mqbench.schemes import parse_scheme
from tests.unit.pt2e_graphs import padded_qsim
from tests.unit.test_ort_int8 import _calibrated, _trained_like

pytest.importorskip("torchao")

GENERATED = '''
cpp_fused_add_dequantize_per_tensor_quantize_per_tensor_2 = async_compile.cpp_pybinding(['uint8_t*'], r\'\'\'
\'\'\')
def call(args):
    cpp_fused_quantize_per_tensor_0(arg104_1, buf0)
    buf1 = torch.ops.onednn.qconv_pointwise.tensor(buf0, x_scale, x_zp, w, s, z, b, [1, 1])
    buf2 = torch.ops.onednn.qconv_pointwise.binary(buf1, x_scale, x_zp, w, s, z, b, [1, 1])
    cpp_fused_add_dequantize_per_tensor_quantize_per_tensor_2(buf13, buf12)
    cpp_fused_add_dequantize_per_tensor_quantize_per_tensor_7(buf23, buf22)
    buf3 = torch.ops.mkldnn._convolution_pointwise.default(buf2, w, b, [0, 0])
    buf4 = torch.ops.onednn.qlinear_pointwise.default(buf3, x_scale, x_zp, w, s, z, b)
    extern_kernels.addmm(b, buf4, w, alpha=1, beta=1, out=buf5)
'''


def test_the_generated_code_is_read_for_int8_float_and_fused_kernels() -> None:
    assert kernels_called(GENERATED) == {
        "int8_ops": {"qconv_pointwise": 1, "qconv_pointwise.binary": 1, "qlinear_pointwise": 1},
        "float_compute_ops": {"_convolution_pointwise": 1, "addmm": 1},
        "inductor_cpp_kernels": {"add_dequantize_per_tensor_quantize_per_tensor": 2, "quantize_per_tensor": 1}}


@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_every_layer_runs_on_onednn_int8_and_agrees_with_the_simulation(scheme: str) -> None:
    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(quick_mobilenet_v2(10)), scheme)
    deployed = TorchaoX86().deploy(qsim)
    out = deployed(x[:32])
    info = deployed.deployment_info()["3x32x32"]  # type: ignore[attr-defined]
    convs = sum(isinstance(m, nn.Conv2d) for m in qsim.modules())
    assert info["int8_ops"] == {"qconv_pointwise": convs, "qlinear_pointwise": 1}
    assert info["float_compute_ops"] == {}
    assert info["compile_s"][f"batch32_threads{torch.get_num_threads()}"] > 0
    with torch.no_grad():
        reference = qsim(x[:32])
    # Measured: 32 of 32 top-1 equal, logit SQNR 26.8 dB at w8a8-pc, logits within 0.25 (one output step: oneDNN
    # scales the int32 accumulator in float and adds the float bias where the simulation convolves dequantized values)
    result = agreement(reference, out)
    assert result["top1_agreement"] == 1.0
    assert result["logit_sqnr_db"] > 25, result


def test_each_shape_and_thread_count_is_compiled_once_and_keeps_its_int8_graph() -> None:
    """A second compile must not throw away the first (``run_and_get_code`` resets Dynamo: the first graph then
    recompiled without freezing and ran float convolutions, 4x slower)."""
    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(quick_mobilenet_v2(10)), "w8a8-pc")
    deployed = InductorModel(pt2e_module(qsim, X86_INDUCTOR), quantized=True)
    threads = torch.get_num_threads()
    full, leftover = deployed(x[:32]), deployed(x[32:52])
    with torch_threads(1):  # Dynamo guards on the thread count: compiled again, with freezing and the fusions
        single = deployed(x[32:52])
    with torch.profiler.profile() as profile:  # back on the first thread count: its graph, not a recompile
        again = deployed(x[:32])
    ops = {event.key for event in profile.key_averages()}
    assert "onednn::qconv_pointwise" in ops and "aten::mkldnn_convolution" not in ops, sorted(ops)
    assert torch.equal(again, full) and len(deployed.compile_s) == 3
    assert set(deployed.deployment_info()["3x32x32"]["compile_s"]) == {
        f"batch32_threads{threads}", f"batch20_threads{threads}", "batch20_threads1"}
    # int32 accumulation on oneDNN's int8 kernels either way: the thread count does not change a logit (a graph
    # recompiled without the int8 fusions would compute in float and differ)
    assert torch.equal(single, leftover)


def test_the_pads_and_the_channel_clip_compile_and_agree() -> None:
    qsim, x = padded_qsim("w8a8-pc")
    deployed = TorchaoX86().deploy(qsim)
    out = deployed(x[:16])
    info = deployed.deployment_info()["3x32x32"]  # type: ignore[attr-defined]
    assert info["int8_ops"] == {"qconv_pointwise": 3, "qlinear_pointwise": 1} and info["float_compute_ops"] == {}
    with torch.no_grad():
        assert agreement(qsim(x[:16]), out)["top1_agreement"] == 1.0


@pytest.mark.parametrize(("scheme", "reason"), [
    ("w4a8-pc", "8-bit weights and 8-bit activations"),
    ("w8a8-pc-asym", "drop -asym"),
    ("w8a8-pc-rr", "drop -rr"),
    ("w8a8-pc-sym", "drop -sym"),
])
def test_schemes_the_kernels_cannot_run_are_refused_with_the_reason(scheme: str, reason: str) -> None:
    problem = TorchaoX86().check_scheme(parse_scheme(scheme))
    assert problem is not None and reason in problem
    assert TorchaoX86().check_scheme(parse_scheme("w8a8-pt")) is None


def test_without_torchao_the_runtime_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    runtime = TorchaoX86()
    assert runtime.unavailable() == "torchao is not installed (pip install 'mqbench[torchao]')"
    assert runtime.info() == {"runtime": None, "unavailable": runtime.unavailable()}


VNNI = simulation_unsupported(cpu_isa()) is None


@pytest.mark.skipif(not VNNI, reason="the oneDNN simulation is checked on VNNI CPUs only")
@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_the_onednn_simulation_gives_the_deployed_logits_bit_for_bit(scheme: str) -> None:
    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(quick_mobilenet_v2(10)), scheme)
    runtime = TorchaoX86()
    simulation = runtime.integer_simulation(qsim)
    assert simulation is not None
    deployed = runtime.deploy(qsim)(x[:32])
    with torch.no_grad():
        assert torch.equal(simulation(x[:32]), deployed)  # measured: 0 of 320 logits differ (w8a8-pc and -pt)
        fake_quant = qsim(x[:32])
    assert not torch.equal(fake_quant, deployed)  # what the simulation adds: fake quantization misses some codes


@pytest.mark.skipif(not VNNI, reason="the oneDNN simulation is checked on VNNI CPUs only")
def test_the_onednn_simulation_covers_pads_the_channel_clip_and_a_residual() -> None:
    qsim, x = padded_qsim("w8a8-pc")
    runtime = TorchaoX86()
    simulation = runtime.integer_simulation(qsim)
    assert simulation is not None
    with torch.no_grad():
        assert torch.equal(simulation(x[:16]), runtime.deploy(qsim)(x[:16]))


def test_the_requantization_adds_the_zero_point_before_rounding() -> None:
    # 1.5 + 0.5 ties: round(v / s + z) rounds half to even *after* the zero point is added
    requantize = OneDnnRequantize(1.0, 3, X86_INDUCTOR)
    v = torch.tensor([0.5, 1.5, 2.5])
    assert torch.equal(requantize(v), torch.tensor([1.0, 1.0, 3.0]))  # codes 4, 4, 6 (round(0.5)+3 would give 3)


def test_without_vnni_there_is_no_onednn_simulation_and_the_record_says_why() -> None:
    assert simulation_unsupported(["avx2", "avx512f", "avx512bw"]) is not None
    assert simulation_unsupported(["avx2", "avx512_vnni"]) is None and simulation_unsupported(["avx_vnni"]) is None
