"""The integer simulation predicts ONNX Runtime code for code: identical logits on networks holding every
operator MobileNets use (convolutions with TensorFlow "SAME" padding, depthwise, ReLU6, residual adds, global
average pooling, the classifier), before and after cross-layer equalization, per-tensor and per-channel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mqbench import harness
from mqbench.backends.ort import mlas
from mqbench.backends.ort.export import export_qdq
from mqbench.backends.ort.integer_sim import IntegerSimulation, UnsupportedOp
from mqbench.backends.ort.runtime import OnnxModel, OrtQDQ, cpu_isa, integer_op_summary
from mqbench.data.synthetic import generate
from mqbench.layers import Conv2dSame
from mqbench.methods.cle import CLEConfig, cross_layer_equalize
from mqbench.models.builtin import quick_mobilenet_v1, quick_mobilenet_v2
from mqbench.plugins import get_plugins
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.qsim import Placement, QuantConv2d, QuantLinear, QuantSim
from mqbench.schemes import parse_scheme
from mqbench.suites import QUICK
from tests.unit.test_ort_int8 import _trained_like

pytest.importorskip("onnxruntime")
modelled = pytest.mark.skipif(mlas.supported_isa(cpu_isa()) is not None, reason="not an x86-64 AVX2 machine")


class SamePaddedResidual(nn.Module):
    """TF "SAME" stem, depthwise-separable block with a residual add, pool, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.act = Conv2dSame(3, 16, 3, stride=2), nn.ReLU6()
        self.dw, self.act2 = Conv2dSame(16, 16, 3, groups=16), nn.ReLU6()
        self.pw = nn.Conv2d(16, 16, 1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.stem(x))
        y = y + self.pw(self.act2(self.dw(y)))
        return self.fc(torch.flatten(self.pool(y), 1))


def _calibrated(model: nn.Module, scheme: str) -> tuple[QuantSim, torch.Tensor]:
    calib = generate(0, "calib", 64)
    qsim = OrtQDQ().quantsim(model, parse_scheme(scheme))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, calib, minmax_observer)
    return qsim.eval(), calib.normalize(generate(0, "test", 64).images)


def _equalized(model: nn.Module) -> nn.Module:
    return cross_layer_equalize(model, CLEConfig(absorb=False))[0]


CASES = {
    "mobilenet_v1 pc": lambda: (_trained_like(quick_mobilenet_v1(10)), "w8a8-pc"),
    "mobilenet_v2 pc": lambda: (_trained_like(quick_mobilenet_v2(10)), "w8a8-pc"),
    "mobilenet_v2 pt": lambda: (_trained_like(quick_mobilenet_v2(10)), "w8a8-pt"),
    "mobilenet_v2 cle pt": lambda: (_equalized(_trained_like(quick_mobilenet_v2(10))), "w8a8-pt"),
    "same padding + residual": lambda: (SamePaddedResidual().eval(), "w8a8-pc"),
}


@modelled
@pytest.mark.parametrize("case", list(CASES))
def test_logits_equal_onnxruntimes_bit_for_bit(case: str) -> None:
    torch.manual_seed(0)
    model, scheme = CASES[case]()
    qsim, x = _calibrated(model, scheme)
    exported = export_qdq(qsim, x[:1])
    assert integer_op_summary(exported)["float_compute_ops"] == {}  # every op on an integer kernel
    deployed = OnnxModel(lambda e: export_qdq(qsim, e), threads=1)(x)
    simulated = IntegerSimulation(qsim)(x)
    assert torch.equal(simulated, deployed), (simulated - deployed).abs().max()


@modelled
def test_the_fake_quant_simulation_is_not_bit_exact_where_the_integer_one_is() -> None:
    """The point of the integer simulation: on the same calibrated QuantSim, fake quantization's logits differ
    from the runtime's (ties of the rounding), the integer simulation's do not."""
    torch.manual_seed(0)
    qsim, x = _calibrated(_trained_like(quick_mobilenet_v2(10)), "w8a8-pc")
    deployed = OnnxModel(lambda e: export_qdq(qsim, e), threads=1)(x)
    with torch.no_grad():
        fake = qsim(x)
    assert not torch.equal(fake, deployed)
    assert torch.equal(IntegerSimulation(qsim)(x), deployed)


def test_a_per_channel_clip_is_exported_as_an_integer_min_after_quantization() -> None:
    torch.manual_seed(0)
    qsim, x = _calibrated(_equalized(_trained_like(quick_mobilenet_v2(10))), "w8a8-pt")
    summary = integer_op_summary(export_qdq(qsim, x[:1]))
    # Before: every clipped convolution ran in float (FusedConv + Min); now QLinearConv and a uint8 Min.
    assert summary["float_compute_ops"] == {} and summary["ops"].get("Min", 0) > 0, summary


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sigmoid(self.conv(x)).mean((2, 3)))


def test_an_operator_without_a_modelled_kernel_is_named() -> None:
    qsim, x = _calibrated(Gated().eval(), "w8a8-pc")
    with pytest.raises(UnsupportedOp, match="sigmoid"):
        IntegerSimulation(qsim)(x)


def test_a_quantsim_placed_for_float_biases_is_refused() -> None:
    qsim = QuantSim.from_float(quick_mobilenet_v1(10).eval(), parse_scheme("w8a8-pc"), Placement(int32_bias=False))
    with pytest.raises(ValueError, match="int32 biases"):
        IntegerSimulation(qsim)



def test_a_cell_whose_graph_the_integer_simulation_cannot_model_still_measures_the_deployment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path))
    plugins = get_plugins()
    cell = harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=["minmax"], runtimes=["ort-qdq"],
                         schemes=["w8a8-pc"], eval_limit=16)[0]
    ws = harness.Workspace(plugins, latency=None)
    monkeypatch.setattr(ws, "float_model", lambda model, weights: (Gated().eval(), {"source": "test"}))
    record = harness.run_cell(cell, ws)
    assert record["status"] == "ok", record.get("error")
    assert "sigmoid" in record["integer_sim_unavailable"] and "deployed" in record["metrics"]
    assert "agreement_integer_sim" not in record and record["agreement"]["images"] == 16


# (activation |c| at most, weight |w| at most, bias codes at most, products per output): each reaches one path of
# _accumulate, the sums staying in int32: float32 with the bias in the convolution; the bias split into float32
# hi + lo; the codes split into 16 * hi + lo; float64 throughout (16-bit activation codes).
ACCUMULATOR_PATHS = {"float32": (255, 127, 2 ** 20, 64), "bias hi + lo": (255, 127, 2 ** 30, 64),
                     "codes 16 * hi + lo": (255, 127, 2 ** 20, 1024), "float64": (32767, 127, 2 ** 20, 256)}


@pytest.mark.parametrize("path", list(ACCUMULATOR_PATHS))
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_the_accumulator_is_the_exact_integer_sum_rounded_once_to_float32(path: str, kind: str) -> None:
    """ONNX Runtime converts its exact int32 accumulator to float32: whatever path the simulation takes, its
    accumulator rounds to the same float32 as the exact sum (computed in float64, exact below 2**53)."""
    from mqbench.backends.ort.integer_sim import Codes, _accumulate, _LayerCodes

    x_max, w_max, b_max, products = ACCUMULATOR_PATHS[path]
    channels = products // 9 if kind == "conv" else products  # a 3x3 kernel: 9 products per input channel
    g = torch.Generator().manual_seed(hash((path, kind)) % 2 ** 31)
    shape = (2, channels, 5, 5) if kind == "conv" else (3, channels)
    # The largest codes everywhere (every product at its bound, so the paths' bounds are reached), signs at random.
    xc = x_max * torch.where(torch.rand(shape, generator=g) < 0.9, 1.0, -1.0)
    w = w_max * torch.where(torch.rand((4, channels) + ((3, 3) if kind == "conv" else ()), generator=g) < 0.9, 1.0, -1.0)
    bias = torch.randint(-b_max, b_max, (4,), generator=g, dtype=torch.int64).double()
    layer = QuantConv2d(channels, 4, 3, padding=1) if kind == "conv" else QuantLinear(channels, 4)
    hi = bias.float()
    ops = _LayerCodes(w, torch.ones(4), float(w.abs().flatten(1).sum(1).max()), torch.ones(()), bias, hi,
                      (bias - hi.double()).float(), float(bias.abs().max()), float((bias - hi.double()).abs().max()))
    acc = _accumulate(layer, xc, Codes(xc, torch.ones(()), 0, float(x_max)), ops)
    if kind == "conv":
        exact = F.conv2d(xc.double(), w.double(), bias, padding=1)
    else:
        exact = F.linear(xc.double(), w.double(), bias)
    assert exact.abs().max() < 2 ** 31  # an int32 accumulator
    assert torch.equal(acc.float(), exact.float())
    assert acc.dtype == (torch.float32 if path in ("float32", "bias hi + lo") else torch.float64)
