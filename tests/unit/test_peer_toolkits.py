"""The peer toolkits NNCF and PT2E on a small MobileNetV2: each writes what its recipe says (granularity, activation
signedness, folded or float weights), its own simulation is what the runtime is handed, and the schemes it cannot
produce are refused with the reason."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch

from mqbench.data.synthetic import generate
from mqbench.metrics.accuracy import agreement
from mqbench.models.builtin import quick_mobilenet_v2
from mqbench.progress import SILENT
from mqbench.schemes import parse_scheme
from tests.unit.test_ort_int8 import _trained_like


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return _trained_like(quick_mobilenet_v2(10))


def _weight_scales(proto: Any) -> list[tuple[int, ...]]:
    """Shapes of the scales of the DequantizeLinear nodes that read constant (weight) tensors."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return [inits[n.input[1]].shape for n in proto.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]


nncf = pytest.importorskip("nncf")


@pytest.mark.parametrize(("scheme", "preset"), [("w8a8-pc", "PERFORMANCE"), ("w8a8-pt", "MIXED")])
def test_nncf_writes_the_granularity_the_scheme_asks_and_the_presets_activation_mode(scheme: str, preset: str) -> None:
    from mqbench.backends.ort.runtime import QdqReference
    from mqbench.toolkits.nncf import NncfRecipe, qdq_summary, quantize_with_nncf

    calib = generate(0, "calib", 32)
    proto = quantize_with_nncf(_model(), parse_scheme(scheme), calib, NncfRecipe(preset))
    shapes = _weight_scales(proto)
    assert shapes and all(len(s) == (1 if scheme == "w8a8-pc" else 0) for s in shapes), shapes
    summary = qdq_summary(proto)
    zero_points = [int(np.asarray(z).ravel()[0]) for z in _activation_zero_points(proto)]
    if preset == "PERFORMANCE":  # symmetric: every activation zero point 0 (signed, or unsigned after a ReLU)
        assert set(zero_points) == {0} and set(summary["activation_quantizers"]) == {"int8", "uint8"}, summary
    else:  # mixed: asymmetric activations, so some zero points are not 0
        assert any(z != 0 for z in zero_points), zero_points
    x = calib.normalize(calib.images)
    reference = QdqReference(proto, threads=1)(x)
    assert reference.shape == (32, 10) and torch.isfinite(reference).all()


def _activation_zero_points(proto: Any) -> list[Any]:
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[2] in inits]


def test_nncf_refuses_what_its_presets_do_not_make() -> None:
    from mqbench.toolkits.nncf import NncfRecipe, NncfToolkit

    kit = NncfToolkit()
    assert kit.check_scheme(parse_scheme("w8a8-pc"), NncfRecipe()) is None
    assert "w8a8" in (kit.check_scheme(parse_scheme("w4a8-pc"), NncfRecipe()) or "")
    assert "preset chooses" in (kit.check_scheme(parse_scheme("w8a8-pc-sym"), NncfRecipe()) or "")
    with pytest.raises(ValueError, match="preset must be one of"):
        NncfRecipe("FAST")


torchao = pytest.importorskip("torchao")


def _qdq_dtypes(module: torch.fx.GraphModule) -> Counter[str]:
    """dtype of every activation quantize_per_tensor node (its last argument)."""
    return Counter(str(n.args[-1]) for n in module.graph.nodes
                   if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
                   and "dequantize" not in str(n.target))


def test_the_x86_inductor_recipe_writes_uint8_activations_and_per_channel_weights() -> None:
    from mqbench.toolkits.pt2e import Pt2eRecipe, Pt2eToolkit, quantize_with_pt2e

    calib = generate(0, "calib", 48)
    module = quantize_with_pt2e(_model(), parse_scheme("w8a8-pc"), calib, Pt2eRecipe("x86_inductor", calib_batch=16),
                                SILENT)
    assert set(_qdq_dtypes(module)) == {"torch.uint8"}
    targets = Counter(str(n.target) for n in module.graph.nodes if n.op == "call_function")
    assert targets["quantized_decomposed.dequantize_per_channel.default"] >= 10, targets
    # dynamic batch: the same graph runs a batch of 3 and of 1
    x = calib.normalize(calib.images[:3])
    with torch.no_grad():
        assert torch.allclose(module(x)[:1], module(x[:1]), atol=1e-5)
    assert "per-channel weights only" in (Pt2eToolkit().check_scheme(parse_scheme("w8a8-pt"), Pt2eRecipe()) or "")


@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_the_xnnpack_recipe_writes_int8_activations_and_the_schemes_granularity(scheme: str) -> None:
    pytest.importorskip("executorch")
    from mqbench.toolkits.pt2e import Pt2eRecipe, quantize_with_pt2e

    module = quantize_with_pt2e(_model(), parse_scheme(scheme), generate(0, "calib", 32), Pt2eRecipe("xnnpack"),
                                SILENT)
    assert set(_qdq_dtypes(module)) == {"torch.int8"}
    per_channel = sum(1 for n in module.graph.nodes if "dequantize_per_channel" in str(n.target))
    assert (per_channel > 0) == (scheme == "w8a8-pc"), per_channel
    # XNNPACKQuantizer annotates conv+ReLU but no conv+ReLU6: the ReLU6 (hardtanh) output is requantized at the
    # convolution's own output qparams, so a [0, 6] activation gets the pre-clamp range's step
    for node in module.graph.nodes:
        if node.op == "call_function" and "hardtanh" in str(node.target):
            before, (after,) = node.args[0], node.users
            assert before.args[1:3] == after.args[1:3], (before.args, after.args)


def test_the_litert_recipe_leaves_float_weights_and_litert_runs_what_it_left_unannotated_in_float() -> None:
    pytest.importorskip("litert_torch")
    from mqbench.backends.litert import LiteRtXnnpack
    from mqbench.backends.pt2e import PT2E_LITERT
    from mqbench.toolkits.pt2e import Pt2eToolkit
    from tests.unit.pt2e_graphs import Padded

    torch.manual_seed(0)
    model, calib = Padded().eval(), generate(0, "calib", 64)
    kit = Pt2eToolkit()
    artifact = kit.quantize(model, parse_scheme("w8a8-pc"), calib, kit.make_config("litert", {}), SILENT)
    assert artifact.format == PT2E_LITERT and artifact.simulation is not None
    # fold_quantize=False: the weights stay float parameters, quantized by a quantize_per_channel node of the graph
    assert any("quantize_per_channel" in str(n.target) and "dequantize" not in str(n.target)
               for n in artifact.payload.graph.nodes)
    deployed = LiteRtXnnpack(threads=1).load(artifact)
    x = calib.normalize(calib.images)
    out, simulated = deployed(x), artifact.simulation(x)
    (info,) = deployed.deployment_info().values()  # type: ignore[attr-defined]
    # litert-torch's quantizer has no pattern for padding="same" convolutions nor the residual add here: the .tflite
    # runs them on float operands (inside the delegate), and the record says so
    assert info["float_compute_ops"] == {"ADD": 1, "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "MINIMUM": 1}, info
    assert info["delegated_ops"]["CONV_2D int8"] == 1 and info["delegated_ops"]["FULLY_CONNECTED int8"] == 1, info
    # measured: 0.0035 apart on logits up to 0.45 (its own graph, in float where the graph is float)
    assert (out - simulated).abs().max() <= 0.01 and agreement(simulated, out)["top1_agreement"] == 1.0
    with pytest.raises(ValueError, match="the recipe names the quantizer"):
        kit.make_config("litert", {"quantizer": "xnnpack"})


brevitas = pytest.importorskip("brevitas")


@pytest.mark.parametrize(("scheme", "recipe"), [("w8a8-pc", "ptq"), ("w8a8-pt", "float_scale")])
def test_brevitas_exports_the_recipes_scales_and_onnx_runtime_follows_its_simulation(scheme: str, recipe: str) -> None:
    from mqbench.backends.ort.runtime import OrtQDQ, QdqReference
    from mqbench.toolkits.brevitas import BrevitasToolkit

    calib = generate(0, "calib", 64)
    kit = BrevitasToolkit()
    artifact = kit.quantize(_model(), parse_scheme(scheme), calib, kit.make_config(recipe, {}), SILENT)
    proto, x = artifact.payload, calib.normalize(calib.images)
    shapes = _weight_scales(proto)
    assert shapes and all(len(s) == (1 if scheme == "w8a8-pc" else 0) for s in shapes), shapes
    scales = np.concatenate([np.ravel(a) for a in _dequantize_scales(proto)])
    powers_of_two = np.all(np.log2(scales) == np.round(np.log2(scales)))
    assert powers_of_two == (recipe == "ptq"), scales[:8]
    simulated = artifact.simulation(x)  # type: ignore[misc]
    unfused = QdqReference(proto, threads=1)(x)
    deployed = OrtQDQ(threads=1).load(artifact)(x)
    assert torch.isfinite(simulated).all() and simulated.abs().max() > 0
    # the QCDQ file means what Brevitas simulated, and ONNX Runtime's fused int8 kernels follow it
    assert agreement(simulated, unfused)["top1_agreement"] >= 0.95
    assert agreement(simulated, deployed)["top1_agreement"] >= 0.9


def _dequantize_scales(proto: Any) -> list[Any]:
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node if n.op_type == "Constant"}
    inits.update(consts)
    return [inits[n.input[1]] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits]

