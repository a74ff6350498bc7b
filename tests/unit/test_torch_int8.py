"""torch-* backends: the QuantSim converted to PyTorch quantized modules with the QuantSim's own codes and
qparams agrees with the simulation on every engine; fused clips and CLE's per-channel clips deploy as
integer clamps; schemes the kernels cannot run are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mqbench.backends.ort.mlas import sums_pairs_in_int16
from mqbench.backends.ort.runtime import cpu_isa
from mqbench.backends.torch_ao.runtime import TorchInt8, quantize_input, quantized_weight
from mqbench.data.synthetic import generate
from mqbench.layers import ChannelClippedReLU, Conv2dSame
from mqbench.metrics.accuracy import agreement
from mqbench.models.builtin import quick_mobilenet_v1
from mqbench.quant import functional as Q
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.qsim import QuantConv2d, QuantSim
from mqbench.schemes import parse_scheme
from tests.unit.test_ort_int8 import _trained_like

ENGINES = [e for e in ("fbgemm", "x86", "qnnpack", "onednn") if e in torch.backends.quantized.supported_engines]


def _prepared(backend: TorchInt8, model: nn.Module, scheme: str) -> tuple[QuantSim, torch.Tensor]:
    """``model`` as the backend prepares it (its bias convention), minmax-calibrated on 64 synthetic images."""
    calib = generate(0, "calib", 64)
    qsim = backend.quantsim(model, parse_scheme(scheme))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, calib, minmax_observer)
    return qsim.eval(), calib.normalize(calib.images)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_converted_model_agrees_with_the_simulation(engine: str, scheme: str) -> None:
    torch.manual_seed(0)
    backend = TorchInt8(engine)
    qsim, x = _prepared(backend, _trained_like(quick_mobilenet_v1(10)), scheme)
    with torch.no_grad():
        simulated = qsim(x)
    result = agreement(simulated, backend.deploy(qsim)(x))
    # Measured on this random net: 64 of 64 images agree on every engine and scheme; logit SQNR (pc / pt)
    # fbgemm 15.9 / 16.1 dB (no reduce_range: it saturates), x86 23.5 / 49.4, qnnpack 43.6 / 53.8, onednn 50.9 / 49.4.
    assert result["top1_agreement"] >= 0.95, result
    assert result["logit_sqnr_db"] is not None and result["logit_sqnr_db"] > 12, result


def test_reduce_range_picks_qparams_on_the_7_bit_grid_and_saturates_at_255_as_torchs_kernels_do() -> None:
    from mqbench.quant.qsim import Placement

    torch.manual_seed(0)
    backend = TorchInt8("x86")
    model = _trained_like(quick_mobilenet_v1(10))
    qsim, x = _prepared(backend, model, "w8a8-pc-rr")
    q = next(iter(qsim.act_quantizers.values()))
    assert (q.qmin, q.qmax, q.saturate_min, q.saturate_max) == (0, 127, 0, 255)
    strict = QuantSim.from_float(model, parse_scheme("w8a8-pc-rr"), Placement(int32_bias=False))
    for table, source in ((strict.weight_quantizers, qsim.weight_quantizers), (strict.act_quantizers, qsim.act_quantizers)):
        for name, quantizer in table.items():  # the same qparams, saturating at 127
            assert source[name].scale is not None and source[name].zero_point is not None
            quantizer.set_qparams(source[name].scale, source[name].zero_point)
    louder = x * 4  # beyond the calibrated ranges, where the two saturations differ
    deployed = backend.deploy(qsim)(louder)
    with torch.no_grad():
        full, clipped = qsim(louder), strict.eval()(louder)
    ok, wrong = agreement(full, deployed), agreement(clipped, deployed)
    assert ok["logit_sqnr_db"] is not None and wrong["logit_sqnr_db"] is not None
    # Codes past 127 let pairs of products pass 32767, which x86 CPUs without VNNI saturate in int16: measured
    # 19.5 against 15.7 dB there (AVX2), over 6 dB apart with VNNI.
    margin = 3 if sums_pairs_in_int16(cpu_isa()) else 6
    assert ok["logit_sqnr_db"] > wrong["logit_sqnr_db"] + margin, (ok, wrong)


def test_weights_keep_the_simulations_codes() -> None:
    torch.manual_seed(0)
    qsim, _ = _prepared(TorchInt8("x86"), _trained_like(quick_mobilenet_v1(10)), "w8a8-pc")
    for name, q in qsim.weight_quantizers.items():
        layer = qsim.model.get_submodule(name)
        assert isinstance(layer, (QuantConv2d, nn.Linear))
        codes = Q.quantize(layer.weight.detach(), q.scale, q.zero_point, qmin=q.qmin, qmax=q.qmax, axis=q.axis)  # type: ignore[arg-type]
        assert torch.equal(quantized_weight(layer).int_repr().to(torch.int32), codes), name  # type: ignore[arg-type]


def test_input_codes_round_before_the_zero_point_is_added() -> None:
    # x / s = 11.5 exactly: the QuantSim rounds 11.5 to 12 (half to even) then adds z = 127 -> 139;
    # torch.quantize_per_tensor rounds 138.5 -> 138. The deployed input must carry the QuantSim's code.
    s = 2.0 ** -6
    x = torch.tensor([11.5 * s, -3.5 * s, 0.0])
    assert quantize_input(x, s, 127).int_repr().tolist() == [139, 123, 127]


def test_per_channel_clip_and_same_padding_deploy_as_integer_ops() -> None:
    torch.manual_seed(0)
    clip = ChannelClippedReLU(8)
    clip.upper.copy_(torch.linspace(0.5, 6.0, 8))
    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.BatchNorm2d(8), clip, nn.Conv2d(8, 8, 1), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    backend = TorchInt8("x86")
    qsim, x = _prepared(backend, _trained_like(model), "w8a8-pc")
    deployed = backend.deploy(qsim)
    code = deployed.module.code  # type: ignore[attr-defined]
    assert "ChannelClamp" in str(deployed.module) or "clamp" in code
    with torch.no_grad():
        simulated = qsim(x)
    result = agreement(simulated, deployed(x))
    assert float(simulated.std(0).mean()) > 0.01  # the logits vary between images
    # Measured: identical logits (no requantization tie falls differently in this small net).
    identical = result["max_abs_logit_diff"] == 0.0
    assert result["top1_agreement"] >= 0.95 and (identical or result["logit_sqnr_db"] > 20), result


@pytest.mark.parametrize(("scheme", "reason"), [("w4a8-pc", "8-bit weights and 8-bit activations"),
                                                 ("w8-pc", "8-bit weights and 8-bit activations"),
                                                 ("w8a8-pc-fl16", "8-bit weights and 8-bit activations"),
                                                 ("w8a8-pc-sym", "unsigned (quint8) activations"),
                                                 ("w8a8-pt-asym", "zero points of 0")])
def test_schemes_the_kernels_cannot_run_are_refused(scheme: str, reason: str) -> None:
    message = TorchInt8("x86").check_scheme(parse_scheme(scheme))
    assert message is not None and reason in message
    assert TorchInt8("x86").check_scheme(parse_scheme("w8a8-pc")) is None


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_adds_the_bias_as_its_quantsim_assumes(engine: str) -> None:
    # A 1x1 conv with a fine output step, so rounding the bias to int32 at s_in * s_w is visible in the codes.
    # Input codes below 128: no pair of products passes 32767, which the AVX2 kernels without VNNI saturate
    # (test_engines_without_vnni_saturate_pairs_of_products).
    torch.manual_seed(0)
    x = torch.quantize_per_tensor(torch.rand(1, 16, 8, 8) * 2, 4 / 255, 0, torch.quint8)
    w = torch.randn(8, 16, 1, 1) * 0.5
    sw = w.abs().amax((1, 2, 3)) / 127
    wq = torch.quantize_per_channel(w, sw.double(), torch.zeros(8, dtype=torch.long), 0, torch.qint8)
    bias, s_out = torch.randn(8) * 0.3, 0.003
    acc = F.conv2d(x.dequantize().double(), wq.dequantize().double())
    step = (4 / 255 * sw).double()
    float_bias = torch.clamp(torch.round((acc + bias.double().view(1, -1, 1, 1)) / s_out) + 128, 0, 255)
    int32_bias = torch.clamp(torch.round((acc + (torch.round(bias.double() / step) * step).view(1, -1, 1, 1)) / s_out)
                             + 128, 0, 255)
    assert not torch.equal(float_bias, int32_bias)
    torch.backends.quantized.engine = engine
    conv = torch.ao.nn.quantized.Conv2d(16, 8, 1)
    conv.set_weight_bias(wq, bias)
    conv.scale, conv.zero_point = s_out, 128
    out = conv(x).int_repr().double()
    qsim = TorchInt8(engine).quantsim(nn.Sequential(nn.Conv2d(16, 8, 1)).eval(), parse_scheme("w8a8-pc"))
    assumes_int32 = qsim.model.get_submodule("0").input_quantizer is not None
    assert torch.equal(out, int32_bias if assumes_int32 else float_bias), engine


def test_the_torch_ao_toolkit_runs_the_default_qconfig_with_reduce_range_as_the_scheme_says() -> None:
    from mqbench.backends.torch_ao.toolkit import TorchAoToolkit
    from mqbench.models.builtin import quick_cnn
    from mqbench.progress import SILENT

    torch.manual_seed(0)
    # ReLU, not ReLU6: torch.ao quantizes a conv's output before a ReLU6 (it fuses only ReLU), at the range of
    # the pre-activation, which on this random net's exploding pre-activations leaves nothing of the signal.
    model = _trained_like(quick_cnn(10))
    calib = generate(0, "calib", 64)
    toolkit, runtime = TorchAoToolkit(), TorchInt8("x86")
    assert "w8a8-pc-rr" in str(toolkit.check_scheme(parse_scheme("w8a8-pt"), toolkit.recipe("default").config))
    assert sorted(toolkit.recipes) == ["default", "minmax"]
    x = calib.normalize(calib.images)
    with torch.no_grad():
        reference = model(x)
    scales = {}
    for scheme in ("w8a8-pc-rr", "w8a8-pc"):
        for calibration in ("default", "minmax"):
            artifact = toolkit.quantize(model, parse_scheme(scheme), calib, toolkit.recipe(calibration).config, SILENT)
            assert runtime.check_format(artifact.format) is None and TorchInt8("fbgemm").check_format(artifact.format)
            deployed = runtime.load(artifact)
            assert any(type(m).__name__ == "ConvReLU2d" for m in deployed.module.modules())  # fused int8 kernels
            assert agreement(reference, deployed(x))["top1_agreement"] >= 0.8
            scales[scheme, calibration] = {n: float(b) for n, b in deployed.module.named_buffers()
                                           if n.endswith("input_scale_0")}
    # MinMax ranges are the same with and without reduce_range: the 7-bit grid has 127 steps for 255.
    for name, scale in scales["w8a8-pc-rr", "minmax"].items():
        assert scale / scales["w8a8-pc", "minmax"][name] == pytest.approx(255 / 127, rel=1e-4)


def test_an_operator_without_a_quantized_kernel_fails_naming_it() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.sigmoid(self.conv(x)).mean((2, 3)))

    backend = TorchInt8("x86")
    qsim, _ = _prepared(backend, Gated().eval(), "w8a8-pc")
    with pytest.raises(ValueError, match=r"operator sigmoid .* has no conversion to torch's quantized kernels"):
        backend.deploy(qsim)


def test_torch_default_quantizes_tensorflow_same_padded_models() -> None:
    from mqbench.backends.torch_ao.toolkit import TorchAoToolkit, with_static_padding
    from mqbench.progress import SILENT

    torch.manual_seed(0)
    model = _trained_like(nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                        Conv2dSame(8, 8, 3, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))
    calib = generate(0, "calib", 64)
    x = calib.normalize(calib.images)
    static = with_static_padding(model, x[:1])
    assert not any(m.training for m in static.modules())
    assert not any(isinstance(m, Conv2dSame) for m in static.modules())
    with torch.no_grad():
        assert torch.equal(static(x), model(x))
        reference = model(x)
    toolkit = TorchAoToolkit()
    deployed = TorchInt8("x86").load(toolkit.quantize(model, parse_scheme("w8a8-pc"), calib,
                                                      toolkit.recipe("default").config, SILENT))
    assert sum(type(m).__name__ == "ConvReLU2d" for m in deployed.module.modules()) == 2  # conv+BN+ReLU fused
    assert agreement(reference, deployed(x))["top1_agreement"] >= 0.8


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_without_vnni_saturate_pairs_of_products(engine: str) -> None:
    """x86 CPUs without VNNI multiply uint8 by int8 with ``vpmaddubsw``, which adds pairs of products in int16
    with saturation (why torch's fbgemm observers default to ``reduce_range``): on such a CPU the x86, fbgemm and
    onednn engines' codes are those of pair-saturated sums over adjacent input channels, on others (and qnnpack)
    those of exact ones. (Measured on AVX2 without VNNI; which engines use VNNI where it exists is not.)"""
    from mqbench.backends.ort.mlas import int16_pair_excess

    if not sums_pairs_in_int16(cpu_isa()):
        pytest.skip(f"measured on x86 without VNNI; this CPU has {cpu_isa()}")
    torch.manual_seed(0)
    x = torch.quantize_per_tensor(torch.rand(1, 16, 8, 8) * 4, 4 / 255, 0, torch.quint8)  # codes up to 255
    sw = torch.full((8,), 0.5 / 127)
    wq = torch.quantize_per_channel(torch.randn(8, 16, 1, 1) * 0.5, sw.double(), torch.zeros(8, dtype=torch.long), 0,
                                    torch.qint8)
    codes, w_codes = x.int_repr().double(), wq.int_repr().double()[:, :, 0, 0]
    exact = torch.einsum("nchw,kc->nkhw", codes, w_codes)
    excess = int16_pair_excess(codes.flatten(2).float(), w_codes.float())
    assert excess is not None and bool(excess.any())  # the weights saturate some pairs
    saturated = exact + excess.double().view(exact.shape)
    s_out = 0.05

    def output_codes(acc: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(acc * (4 / 255) * sw.double().view(1, -1, 1, 1) / s_out), 0, 255)

    torch.backends.quantized.engine = engine
    conv = torch.ao.nn.quantized.Conv2d(16, 8, 1, bias=False)
    conv.set_weight_bias(wq, None)
    conv.scale, conv.zero_point = s_out, 0
    out = conv(x).int_repr().double()
    pairs = engine != "qnnpack" and sums_pairs_in_int16(cpu_isa())
    assert torch.equal(out, output_codes(saturated if pairs else exact)), (engine, cpu_isa())
    assert not torch.equal(output_codes(saturated), output_codes(exact))
