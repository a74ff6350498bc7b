"""QuantSim: quantizers where an int8 runtime quantizes, BN folded exactly, weights on the grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mqbench.data.synthetic import generate
from mqbench.models.builtin import quick_cnn, quick_mobilenet_v1, quick_mobilenet_v2
from mqbench.quant import functional as Q
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.graph import fold_batchnorm, trace, weighted_layers
from mqbench.quant.qsim import Placement, QuantSim
from mqbench.schemes import parse_scheme


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("build", [quick_cnn, quick_mobilenet_v1, quick_mobilenet_v2])
def test_bn_folding_preserves_the_function(build) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(build(10))
    x = torch.randn(4, 3, 32, 32)
    folded = fold_batchnorm(trace(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_quantization_points_of_mobilenet_v2() -> None:
    model = quick_mobilenet_v2(10).eval()
    qsim = QuantSim.from_float(model, parse_scheme("w8a8"))
    points = list(qsim.act_quantizers)
    assert points[0] == "x"  # network input
    assert "features.0.2" in points  # stem conv output after its fused ReLU6, not the conv itself
    assert "features.0.0" not in points
    assert "features.1.conv.1" in points  # linear bottleneck (conv without activation)
    adds = [p for p in points if p.startswith("add")]
    assert len(adds) == sum(1 for m in model.modules() if getattr(m, "use_res_connect", False)) == 3
    assert "pool" in points  # average pool requantizes
    assert points[-1] == "classifier.1"  # logits
    # every weighted layer has a weight quantizer; weights per tensor for -pt
    assert set(qsim.weight_quantizers) == {layer.name for layer in weighted_layers(qsim.model)}
    assert all(q.axis is None for q in qsim.weight_quantizers.values())


def test_placement_is_the_backends_choice() -> None:
    model = quick_mobilenet_v2(10).eval()
    default = QuantSim.from_float(model, parse_scheme("w8a8"))
    other = QuantSim.from_float(model, parse_scheme("w8a8"), Placement(quantize_input=False, requantize_pooling=False,
                                                                         fuse_activations=False))
    assert "x" not in other.act_quantizers and "pool" not in other.act_quantizers
    assert "features.0.0" in other.act_quantizers and "features.0.2" in other.act_quantizers
    assert len(other.act_quantizers) > len(default.act_quantizers)


@pytest.mark.parametrize("requantize_pooling", [True, False])
def test_first_last_bits_apply_to_the_first_and_last_layers_and_their_inputs(requantize_pooling: bool) -> None:
    model = quick_mobilenet_v2(10).eval()
    qsim = QuantSim.from_float(model, parse_scheme("w4a4-pc-fl8"), Placement(requantize_pooling=requantize_pooling))
    layers = [layer.name for layer in weighted_layers(qsim.model)]
    weight_bits = {name: q.bits for name, q in qsim.weight_quantizers.items()}
    assert weight_bits.pop(layers[0]) == 8 and weight_bits.pop(layers[-1]) == 8
    assert set(weight_bits.values()) == {4}
    act_bits = {name: q.bits for name, q in qsim.act_quantizers.items()}
    last_input = "pool" if requantize_pooling else [p for p in act_bits if p.startswith("features.")][-1]
    assert act_bits.pop("x") == 8 and act_bits.pop(last_input) == 8
    assert set(act_bits.values()) == {4}  # the logits too: only layer inputs are kept at 8 bits
    rr = QuantSim.from_float(model, parse_scheme("w4a4-pc-rr-fl8"))
    assert rr.act_quantizers["x"].bits == 7 and rr.act_quantizers["features.0.2"].bits == 3


def test_max_pool_and_flatten_are_pass_through() -> None:
    qsim = QuantSim.from_float(quick_cnn(10).eval(), parse_scheme("w8a8"))
    assert not any("features_2" == p or p.startswith("flatten") for p in qsim.act_quantizers)
    assert not any(isinstance(qsim.model.get_submodule(p), nn.MaxPool2d)
                   for p in qsim.act_quantizers if "." in p)


def test_weights_only_scheme_has_no_activation_quantizers() -> None:
    qsim = QuantSim.from_float(quick_cnn(10).eval(), parse_scheme("w4"))
    assert qsim.act_quantizers == {} and len(qsim.weight_quantizers) == 7


@pytest.mark.parametrize(("scheme", "levels"), [("w4a8-pc", 16), ("w8a8-pt", 256)])
def test_calibrated_weights_lie_on_the_grid(scheme: str, levels: int) -> None:
    torch.manual_seed(0)
    qsim = QuantSim.from_float(_randomize_bn(quick_mobilenet_v1(10)), parse_scheme(scheme))
    calibrate_weights(qsim, minmax_observer)
    for name, q in qsim.weight_quantizers.items():
        w = q(qsim.layer_weight(name)).detach()
        per = w.flatten(1) if q.per_channel else w.reshape(1, -1)
        scale = q.scale.view(-1, 1) if q.per_channel else q.scale
        ints = per / scale
        assert torch.allclose(ints, ints.round(), atol=1e-3), name
        for row in ints.round():
            assert row.unique().numel() <= levels


def test_calibrated_sim_is_close_to_float_at_16_bits_and_uncalibrated_sim_raises() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(quick_mobilenet_v2(10))
    data = generate(0, "calib", 64)
    qsim = QuantSim.from_float(model, parse_scheme("w16a16-pc"))
    x = data.normalize(data.images[:8])
    with pytest.raises(RuntimeError, match="calibrate"):
        qsim(x)
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, data, minmax_observer)
    with torch.no_grad():
        ref, out = model(x), qsim(x)
        with qsim.float_mode():
            assert torch.allclose(qsim(x), ref, atol=1e-4)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 1e-3
    exported = qsim.export_qparams()
    assert exported["scheme"] == "w16a16-pc" and exported["activations"]["x"]["scale"] is not None


def test_a_quantized_layer_adds_its_bias_as_int32_codes_at_input_times_weight_scale() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    model[0].bias.data = torch.tensor([0.1234567, -0.3, 0.05, 1.0])
    data = generate(0, "calib", 16)
    qsim = QuantSim.from_float(model, parse_scheme("w8a8-pc"))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, data, minmax_observer)
    conv = qsim.model.get_submodule("0")
    q_in, q_w = qsim.act_quantizers["input_1"], conv.weight_quantizer
    step = q_in.scale * q_w.scale
    x = data.normalize(data.images[:4])
    x_codes = Q.quantize(x, q_in.scale, q_in.zero_point, qmin=0, qmax=255).double()
    w_codes = Q.quantize(conv.weight.detach(), q_w.scale, q_w.zero_point, qmin=-128, qmax=127, axis=0).double()
    # The integer computation: int32 accumulation of (x - zp) * w plus round(b / step), times step.
    acc = F.conv2d(x_codes - float(q_in.zero_point), w_codes) + torch.round(conv.bias.detach().double() / step).view(1, -1, 1, 1)
    expected = acc * step.double().view(1, -1, 1, 1)
    seen = {}
    conv.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    with torch.no_grad():
        qsim(x)
    assert torch.allclose(seen["out"].double(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(conv.bias, torch.round(conv.bias / step) * step)  # the float bias is off the grid
    # Float mode and wider-than-8-bit schemes keep the float bias.
    with torch.no_grad(), qsim.float_mode():
        assert torch.allclose(qsim(x), model(x), atol=1e-5)
