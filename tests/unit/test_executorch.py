"""executorch-xnnpack: the QuantSim written as a PT2E quantized graph computes what the QuantSim computes, XNNPACK's
delegate takes the whole graph (TensorFlow "SAME" pads, ``padding="same"``, residual adds, the per-channel clip of
cross-layer equalization), and what ExecuTorch runs agrees with the simulation."""

from __future__ import annotations

import sys

import pytest
import torch

from mqbench.backends.executorch import ExecuTorchXnnpack
from mqbench.backends.pt2e import pt2e_module
from mqbench.metrics.accuracy import agreement
from mqbench.models.builtin import quick_mobilenet_v2
from mqbench.schemes import parse_scheme
from tests.unit.pt2e_graphs import padded_qsim
from tests.unit.test_ort_int8 import _calibrated, _trained_like

pytest.importorskip("executorch.runtime")


@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_the_pt2e_graph_computes_the_quantsim(scheme: str) -> None:
    qsim, x = padded_qsim(scheme)
    with torch.no_grad():
        expected, got = qsim(x), pt2e_module(qsim)(x)
    # The same codes everywhere but where x / s and x * (1 / s) could round apart (quantized_decomposed multiplies
    # by the reciprocal): measured max |diff| 0 on these inputs; one logit step allowed.
    step = float(qsim.act_quantizers[next(reversed(qsim.act_quantizers))].scale)
    assert (expected - got).abs().max() <= step + 1e-6
    assert torch.equal(expected.argmax(1), got.argmax(1))


@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_xnnpack_takes_the_whole_padded_graph_and_agrees_with_the_simulation(scheme: str) -> None:
    qsim, x = padded_qsim(scheme)
    deployed = ExecuTorchXnnpack(threads=1).deploy(qsim)
    out = deployed(x)
    (info,) = deployed.deployment_info().values()  # type: ignore[attr-defined]
    assert info["delegates"] == 1 and info["ops_outside_delegates"] == {}, info
    assert info["delegated_ops"]["convolution"] == 3 and info["delegated_ops"]["minimum"] == 1, info
    with torch.no_grad():
        simulated = qsim(x)
    step = float(qsim.act_quantizers[next(reversed(qsim.act_quantizers))].scale)
    # Measured: the same logits (0 steps apart) on this small graph, pads, clip, add and pool included
    assert (out - simulated).abs().max() <= 1e-6, (out - simulated).abs().max() / step
    assert agreement(simulated, out)["top1_agreement"] == 1.0


@pytest.mark.parametrize("scheme", ["w8a8-pc", "w8a8-pt"])
def test_quick_mobilenet_v2_agrees_with_the_simulation(scheme: str) -> None:
    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(quick_mobilenet_v2(10)), scheme)
    out = ExecuTorchXnnpack(threads=2).deploy(qsim)(x)
    with torch.no_grad():
        result = agreement(qsim(x), out)
    # Measured on AVX-512 VNNI: 64/64 images agree, logit SQNR 30.0 dB (w8a8-pc) / 64.2 dB (w8a8-pt)
    assert result["top1_agreement"] >= 0.95, result
    assert result["logit_sqnr_db"] is not None and result["logit_sqnr_db"] > 25, result


def test_float_model_matches_pytorch() -> None:
    torch.manual_seed(0)
    model = _trained_like(quick_mobilenet_v2(10))
    x = torch.randn(4, 3, 32, 32)
    deployed = ExecuTorchXnnpack(threads=1).deploy_float(model)
    with torch.no_grad():
        out, expected = deployed(x), model(x)
    # XNNPACK folds the batch norms and sums in its own order: measured max |diff| 2.4e-3 on logits of ~0.5 (this
    # random net's large BN gains); on the real MobileNets the float top-1 equals PyTorch's (records)
    assert (out - expected).abs().max() < 1e-2 and torch.equal(out.argmax(1), expected.argmax(1))
    (info,) = deployed.deployment_info().values()  # type: ignore[attr-defined]
    assert info["delegates"] == 1 and info["float_compute_ops"] == {}, info


def test_resizing_the_threadpool_reloads_the_methods_it_would_leave_dangling() -> None:
    """ExecuTorch's threadpool resize frees the pool every loaded XNNPACK method holds: running one loaded before a
    resize crashed the process (a latency measurement at 1 then 2 threads did)."""
    qsim, x = padded_qsim("w8a8-pc")
    deployed = ExecuTorchXnnpack(threads=2).deploy(qsim)
    first = deployed(x)
    one_thread = deployed.with_threads(1)  # type: ignore[attr-defined]
    assert torch.equal(one_thread(x), first)
    assert torch.equal(deployed(x), first)  # loaded again under the 2-thread pool
    assert torch.equal(one_thread(x), first)


@pytest.mark.parametrize(("scheme", "reason"), [("w8a8-pt-asym", "symmetric weights"), ("w8a8-pc-rr", "-rr"),
                                                ("w4a8", "8-bit weights and 8-bit activations")])
def test_schemes_xnnpack_cannot_run_are_refused_with_the_reason(scheme: str, reason: str) -> None:
    problem = ExecuTorchXnnpack().check_scheme(parse_scheme(scheme))
    assert problem is not None and reason in problem


def test_without_executorch_the_runtime_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    reason = ExecuTorchXnnpack().unavailable()
    assert reason is not None and "mqbench[executorch]" in reason
    assert ExecuTorchXnnpack().info()["runtime"] is None


def test_the_xnnpack_simulation_gives_executorch_s_logits_exactly() -> None:
    """ExecuTorch's XNNPACK lowering rounds the float bias as litert-torch's converter does: the same simulation."""
    from mqbench.backends.xnnpack import XnnpackSimulation, simulation_unsupported

    if simulation_unsupported() is not None:
        pytest.skip(str(simulation_unsupported()))
    torch.manual_seed(0)
    for qsim, x in [padded_qsim("w8a8-pc"), _calibrated(_trained_like(quick_mobilenet_v2(10)), "w8a8-pt")]:
        deployed = ExecuTorchXnnpack(threads=2).deploy(qsim)(x)
        with torch.no_grad():
            assert torch.equal(XnnpackSimulation(qsim)(x), deployed)
