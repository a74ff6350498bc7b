"""ort-qdq: the QuantSim exported as QDQ ONNX runs on ONNX Runtime's integer kernels only, with the
QuantSim's own weight codes, and its logits agree with the simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mqbench.backends.ort.export import export_qdq
from mqbench.backends.ort.runtime import OnnxModel, OrtQDQ, integer_op_summary
from mqbench.data.synthetic import generate
from mqbench.layers import Conv2dSame
from mqbench.metrics.accuracy import agreement
from mqbench.models.builtin import quick_mobilenet_v1
from mqbench.quant import functional as Q
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.qsim import QuantSim
from mqbench.schemes import parse_scheme

pytest.importorskip("onnxruntime")


def _trained_like(model: nn.Module) -> nn.Module:
    """An untrained net with unit BN outputs ~0; give its BN layers trained-like statistics."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.exp(torch.randn(m.num_features, generator=g))
            m.running_var.data = torch.rand(m.num_features, generator=g) * 0.1 + 0.01
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
    return model.eval()


def _calibrated(model: nn.Module, scheme: str) -> tuple[QuantSim, torch.Tensor]:
    calib = generate(0, "calib", 64)
    qsim = QuantSim.from_float(model, parse_scheme(scheme))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, calib, minmax_observer)
    return qsim.eval(), calib.normalize(calib.images)


@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_every_layer_runs_an_integer_kernel_and_agrees_with_the_simulation(scheme: str) -> None:
    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(quick_mobilenet_v1(10)), scheme)
    model = export_qdq(qsim, x[:1])
    summary = integer_op_summary(model)
    convs = sum(isinstance(m, nn.Conv2d) for m in qsim.modules())
    assert summary["float_compute_ops"] == {}, summary
    assert summary["ops"]["QLinearConv"] == convs and summary["ops"]["QGemm"] == 1, summary
    with torch.no_grad():
        simulated = qsim(x)
    deployed = OnnxModel(lambda e: export_qdq(qsim, e), threads=1)(x)
    result = agreement(simulated, deployed)
    # Measured: 64/64 images agree, logit SQNR 43.7 dB (w8a8-pc) / 53.6 dB (w8a8-pt) on this random net (the
    # runtime requantizes with its own multiplier: one-step differences at ties, amplified layer by layer).
    assert result["top1_agreement"] >= 0.95, result
    assert result["logit_sqnr_db"] is not None and result["logit_sqnr_db"] > 15, result


def test_weights_are_the_simulations_codes_and_biases_int32() -> None:
    from onnx import numpy_helper

    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(quick_mobilenet_v1(10)), "w8a8-pc")
    model = export_qdq(qsim, x[:1])
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    name = next(iter(qsim.weight_quantizers))
    quantizer = qsim.weight_quantizers[name]
    assert quantizer.scale is not None and quantizer.zero_point is not None
    codes = Q.quantize(qsim.layer_weight(name).detach(), quantizer.scale, quantizer.zero_point,
                       qmin=quantizer.qmin, qmax=quantizer.qmax, axis=quantizer.axis).numpy()
    stored = [a for k, a in inits.items() if k.endswith("_quantized") and a.dtype == np.int8 and a.shape == codes.shape]
    assert any(np.array_equal(a, codes) for a in stored)
    assert any(a.dtype == np.int32 for k, a in inits.items() if k.endswith("_bias_quantized"))
    assert not any(a.dtype == np.float32 and a.ndim == 4 for a in inits.values())  # no float conv weight left


def test_same_padding_runs_on_the_integer_tensor() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU(), Conv2dSame(8, 8, 3, groups=8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    qsim, x = _calibrated(model, "w8a8-pc")
    exported = export_qdq(qsim, x[:1])
    summary = integer_op_summary(exported)
    assert summary["float_compute_ops"] == {} and summary["ops"]["QLinearConv"] == 2, summary
    with torch.no_grad():
        simulated = qsim(x)
    assert agreement(simulated, OnnxModel(lambda e: export_qdq(qsim, e), threads=1)(x))["top1_agreement"] >= 0.95


def test_agreement_counts_top1_matches_and_logit_sqnr() -> None:
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    same = agreement(ref, ref.clone())
    assert same["top1_agreement"] == 1.0 and same["logit_sqnr_db"] is None
    other = ref.clone()
    other[3] = torch.tensor([3.0, 0.0])
    result = agreement(ref, other)
    assert result["top1_agreement"] == 0.75
    assert abs(result["logit_sqnr_db"] - 10 * np.log10(16.0 / 18.0)) < 1e-9
    with pytest.raises(ValueError, match="cannot be compared"):
        agreement(ref, ref[:2])


@pytest.mark.parametrize(("scheme", "reason"), [("w4a8-pc", "8-bit weights and 8-bit activations"),
                                                 ("w8-pc", "8-bit weights and 8-bit activations"),
                                                 ("w8a8-pc-fl16", "8-bit weights and 8-bit activations"),
                                                 ("w8a8-pc-asym", "zero points of 0")])
def test_schemes_the_runtime_cannot_run_are_refused(scheme: str, reason: str) -> None:
    message = OrtQDQ().check_scheme(parse_scheme(scheme))
    assert message is not None and reason in message
    assert OrtQDQ().check_scheme(parse_scheme("w8a8-pt")) is None


def test_qoperator_form_holds_only_qlinear_operators_and_runs_the_same_kernels_as_qdq() -> None:
    import onnx

    from mqbench.backends.ort.export import to_qoperator

    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(quick_mobilenet_v1(10)), "w8a8-pc")
    qdq = export_qdq(qsim, x[:1])
    qop = to_qoperator(qdq)
    ops = {node.op_type for node in qop.graph.node}
    assert "QLinearConv" in ops and "QGemm" in ops and not ops & {"Conv", "Gemm", "Add", "Relu", "Clip"}, ops
    assert sum(n.op_type == "QuantizeLinear" for n in qop.graph.node) == 1  # the input only
    qdq_out = OnnxModel(lambda e: export_qdq(qsim, e), threads=1)(x)
    qop_out = OnnxModel(lambda e: to_qoperator(export_qdq(qsim, e)), threads=1)(x)
    assert torch.equal(qdq_out, qop_out)
    # A Q/DQ pair the optimizer cannot fuse (around a float Sigmoid) is refused, naming the operator.
    broken = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
         onnx.helper.make_node("Sin", ["d"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("q", onnx.TensorProto.UINT8, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(np.array(0.1, np.float32), "s"),
         onnx.numpy_helper.from_array(np.array(0, np.uint8), "z")]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    broken.graph.node.insert(0, onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d2"]))
    broken.graph.node.append(onnx.helper.make_node("Add", ["d", "d2"], ["a"]))
    broken.graph.output.append(onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, 4]))
    with pytest.raises(ValueError, match="could not turn into QLinear operators: Add"):
        to_qoperator(broken)


def test_the_ort_toolkit_quantizes_with_onnxruntimes_own_tool_on_the_calibration_images() -> None:
    from mqbench.backends.ort.toolkit import OrtToolkit
    from mqbench.progress import SILENT

    torch.manual_seed(0)
    model = _trained_like(quick_mobilenet_v1(10))
    calib = generate(0, "calib", 64)
    toolkit = OrtToolkit()
    assert sorted(toolkit.recipes) == ["entropy", "minmax"]
    assert "w8a8" in str(toolkit.check_scheme(parse_scheme("w4a8-pc"), toolkit.recipe("minmax").config))
    artifact = toolkit.quantize(model, parse_scheme("w8a8-pc"), calib, toolkit.recipe("minmax").config, SILENT)
    assert artifact.format == "onnx-qdq" and OrtQDQ().check_format(artifact.format) is None
    deployed = OrtQDQ(threads=1).load(artifact)
    x = calib.normalize(calib.images)
    out = deployed(x)
    summary = deployed.deployment_info()["3x32x32"]
    assert summary["float_compute_ops"] == {} and summary["ops"]["QLinearConv"] >= 1, summary
    with torch.no_grad():
        reference = model(x)
    assert agreement(reference, out)["top1_agreement"] >= 0.8  # int8 of the float model, not of a QuantSim


def test_signed_activations_shift_every_uint8_constant_and_nothing_else() -> None:
    from onnx import TensorProto, numpy_helper

    from mqbench.backends.ort.export import signed_activations

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU6(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    qsim, x = _calibrated(_trained_like(model), "w8a8-pc")
    unsigned = export_qdq(qsim, x[:1])
    signed = signed_activations(unsigned)

    def constants(m):  # type: ignore[no-untyped-def]
        tensors = {t.name: t for t in m.graph.initializer}
        tensors.update({n.output[0]: a.t for n in m.graph.node if n.op_type == "Constant" for a in n.attribute})
        return tensors

    before, after = constants(unsigned), constants(signed)
    assert sum(t.data_type == TensorProto.UINT8 for t in before.values()) >= 3  # zero points and the pad value
    for name, tensor in before.items():
        old, new = numpy_helper.to_array(tensor), numpy_helper.to_array(after[name])
        if tensor.data_type == TensorProto.UINT8:
            assert after[name].data_type == TensorProto.INT8 and np.array_equal(old.astype(int) - 128, new), name
        else:
            assert np.array_equal(old, new) and after[name].data_type == tensor.data_type, name


@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_s8s8_runs_every_group_in_integer_as_its_integer_simulation_predicts(scheme: str) -> None:
    """ort-qdq-s8s8 (int8 activations, session.qdqisint8allowed=1): every conv, add and the classifier in the
    S8S8 kernels, its logits those of the integer simulation on int8 codes bit for bit. Not U8S8's in general: the
    same real values, but QLinearAdd rounds its result computed on the shifted codes (measured here: equal with
    w8a8-pc, 0.005 apart at most with w8a8-pt, the same top-1 on all 64 images)."""
    from mqbench.backends import QUANTSIM, Artifact
    from mqbench.backends.ort import mlas
    from mqbench.backends.ort.integer_sim import IntegerSimulation
    from mqbench.backends.ort.runtime import OrtQDQS8S8, cpu_isa
    from mqbench.testing.models import conformance_mobilenet_v2

    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(conformance_mobilenet_v2()), scheme)
    s8 = OrtQDQS8S8(threads=1).load(Artifact(QUANTSIM, qsim))
    u8 = OrtQDQ(threads=1).load(Artifact(QUANTSIM, qsim))
    out = s8(x)
    assert agreement(out, u8(x))["top1_agreement"] >= 0.95
    summary = next(iter(s8.deployment_info().values()))  # type: ignore[attr-defined]
    assert summary["float_compute_ops"] == {} and summary["ops"]["QLinearAdd"] >= 1, summary
    if mlas.supported_isa(cpu_isa()) is None:
        assert torch.equal(IntegerSimulation(qsim, signed_activations=True)(x), out)
    assert OrtQDQS8S8().info()["activation_type"] == "int8" and OrtQDQ().info()["activation_type"] == "uint8"
