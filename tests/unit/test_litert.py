"""litert-xnnpack: the QuantSim converted to an int8 ``.tflite`` by litert-torch, run by LiteRT's interpreter with
XNNPACK: the graph on int8 operands (pads, residual add, pool, classifier in XNNPACK; CLE's clip on LiteRT's own kernel), what it
computes against the simulation, the float model, the delegation report, the schemes it refuses."""

from __future__ import annotations

import sys

import pytest
import torch

from mqbench.backends.litert import LiteRtXnnpack, executed_ops
from mqbench.backends.pt2e import LITERT, XNNPACK, pt2e_module
from mqbench.metrics.accuracy import agreement
from mqbench.models.builtin import quick_mobilenet_v2
from mqbench.schemes import parse_scheme
from tests.unit.pt2e_graphs import padded_qsim
from tests.unit.test_ort_int8 import _calibrated, _trained_like


def test_executed_ops_take_a_delegate_for_the_nodes_it_replaced() -> None:
    """Node 0 runs outside (its output feeds the delegate), nodes 1-2 were replaced by the delegate (node 3), whose
    output is the graph's: the interpreter runs 0 and 3."""
    ops = [{"index": 0, "op_name": "PAD", "inputs": [0], "outputs": [5]},
           {"index": 1, "op_name": "CONV_2D", "inputs": [5, 1, 2], "outputs": [6]},
           {"index": 2, "op_name": "ADD", "inputs": [6, 5], "outputs": [7]},
           {"index": 3, "op_name": "DELEGATE", "inputs": [5, 1, 2], "outputs": [7]}]
    assert [op["index"] for op in executed_ops(ops, [7])] == [0, 3]
    assert [op["index"] for op in executed_ops(ops[:3], [7])] == [0, 1, 2]  # no delegate: all of them run


def test_the_litert_graph_computes_what_the_xnnpack_graph_computes() -> None:
    """LiteRT's graph differs from ExecuTorch's only in holding on-grid float weights before a q/dq pair."""
    qsim, x = padded_qsim("w8a8-pc")
    with torch.no_grad():
        assert torch.equal(pt2e_module(qsim, LITERT)(x), pt2e_module(qsim, XNNPACK)(x))


litert = pytest.importorskip("litert_torch")


@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_the_padded_graph_runs_in_int8_and_agrees_with_the_simulation(scheme: str) -> None:
    qsim, x = padded_qsim(scheme)
    deployed = LiteRtXnnpack(threads=1).deploy(qsim)
    out = deployed(x)
    (info,) = deployed.deployment_info().values()  # type: ignore[attr-defined]
    # XNNPACK's delegate takes no quantized MINIMUM: CLE's per-channel clip runs on LiteRT's own int8 kernel, between
    # two delegates; nothing runs in float
    assert info["delegates"] == 2 and info["ops_outside_delegates"] == {"MINIMUM int8": 1}, info
    assert info["float_compute_ops"] == {}, info
    assert info["delegated_ops"]["CONV_2D int8"] + info["delegated_ops"]["DEPTHWISE_CONV_2D int8"] == 3, info
    assert info["delegated_ops"]["ADD int8"] == 1 and info["delegated_ops"]["FULLY_CONNECTED int8"] == 1, info
    with torch.no_grad():
        simulated = qsim(x)
    step = float(qsim.act_quantizers[next(reversed(qsim.act_quantizers))].scale)
    # Measured: the simulation's logits exactly (0 steps apart) on this small graph, pads, clip, add and pool included
    assert (out - simulated).abs().max() <= 1e-6, (out - simulated).abs().max() / step
    assert agreement(simulated, out)["top1_agreement"] == 1.0


@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_quick_mobilenet_v2_agrees_with_the_simulation(scheme: str) -> None:
    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(quick_mobilenet_v2(10)), scheme)
    out = LiteRtXnnpack(threads=2).deploy(qsim)(x)
    with torch.no_grad():
        result = agreement(qsim(x), out)
    # Measured on AVX-512 VNNI: 64/64 images agree, logit SQNR 30.0 dB (w8a8-pc) / 64.2 dB (w8a8-pt), as ExecuTorch's
    assert result["top1_agreement"] >= 0.95, result
    assert result["logit_sqnr_db"] is not None and result["logit_sqnr_db"] > 25, result


def test_float_model_matches_pytorch_and_reports_its_float_ops() -> None:
    torch.manual_seed(0)
    model = _trained_like(quick_mobilenet_v2(10))
    x = torch.randn(4, 3, 32, 32)
    deployed = LiteRtXnnpack(threads=1).deploy_float(model)
    with torch.no_grad():
        out, expected = deployed(x), model(x)
    # XNNPACK folds the batch norms and sums in its own order: measured max |diff| 4.4e-3 on logits up to 0.74
    assert (out - expected).abs().max() < 1e-2 and torch.equal(out.argmax(1), expected.argmax(1))
    (info,) = deployed.deployment_info().values()  # type: ignore[attr-defined]
    assert info["delegates"] == 1 and info["ops_outside_delegates"] == {}, info
    assert info["float_compute_ops"]["CONV_2D"] >= 1, info  # a float model's compute ops are all float


def test_thread_counts_share_the_converted_model() -> None:
    qsim, x = padded_qsim("w8a8-pc")
    deployed = LiteRtXnnpack(threads=2).deploy(qsim)
    first = deployed(x)
    one_thread = deployed.with_threads(1)  # type: ignore[attr-defined]
    assert torch.equal(one_thread(x), first)
    assert one_thread.flatbuffers is deployed.flatbuffers and deployed.size_bytes() > 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(("scheme", "reason"), [("w8a8-pt-asym", "symmetric weights"), ("w8a8-pc-rr", "-rr"),
                                                ("w4a8", "8-bit weights and 8-bit activations")])
def test_schemes_litert_cannot_run_are_refused_with_the_reason(scheme: str, reason: str) -> None:
    problem = LiteRtXnnpack().check_scheme(parse_scheme(scheme))
    assert problem is not None and reason in problem


def test_without_litert_the_runtime_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    reason = LiteRtXnnpack().unavailable()
    assert reason is not None and "mqbench[litert]" in reason
    assert LiteRtXnnpack().info()["runtime"] is None


def test_the_xnnpack_simulation_gives_litert_s_logits_exactly() -> None:
    """On the padded graph and the quick MobileNetV2 (both schemes): XNNPACK's arithmetic code for code."""
    from mqbench.backends.xnnpack import XnnpackSimulation, simulation_unsupported

    if simulation_unsupported() is not None:
        pytest.skip(str(simulation_unsupported()))
    torch.manual_seed(0)
    cases = [padded_qsim("w8a8-pc"), padded_qsim("w8a8-pt"),
             _calibrated(_trained_like(quick_mobilenet_v2(10)), "w8a8-pc")]
    for qsim, x in cases:
        deployed = LiteRtXnnpack(threads=2).deploy(qsim)(x)
        with torch.no_grad():
            assert torch.equal(XnnpackSimulation(qsim)(x), deployed)
