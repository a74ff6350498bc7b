"""The QuantSim prepared for evaluation (mqbench.quant.inference) computes the QuantSim's logits bit for bit: on
every quick model, per tensor and per channel, placed for ONNX Runtime (int32 biases) and for float biases, after
cross-layer equalization, and where a clamp is not redundant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mqbench.backends.ort.runtime import OrtQDQ
from mqbench.data.synthetic import generate
from mqbench.methods.cle import CLEConfig, cross_layer_equalize
from mqbench.models.builtin import quick_cnn, quick_mobilenet_v1, quick_mobilenet_v2
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.inference import drop_redundant_clamps, for_inference
from mqbench.quant.qsim import QuantSim
from mqbench.schemes import parse_scheme
from tests.unit.test_integer_sim import SamePaddedResidual
from tests.unit.test_ort_int8 import _trained_like

MODELS = {
    "quick_cnn": lambda: _trained_like(quick_cnn(10)),
    "quick_mobilenet_v1": lambda: _trained_like(quick_mobilenet_v1(10)),
    "quick_mobilenet_v2": lambda: _trained_like(quick_mobilenet_v2(10)),
    "mobilenet_v2 after cle": lambda: cross_layer_equalize(_trained_like(quick_mobilenet_v2(10)), CLEConfig(absorb=False))[0],
    "same padding + residual": lambda: SamePaddedResidual().eval(),
}


def _calibrated(model: nn.Module, scheme: str, ort: bool) -> QuantSim:
    qsim = OrtQDQ().quantsim(model, parse_scheme(scheme)) if ort else QuantSim.from_float(model, parse_scheme(scheme))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, generate(0, "calib", 64), minmax_observer)
    return qsim.eval()


@pytest.mark.parametrize("ort", [True, False], ids=["int32 bias", "float bias"])
@pytest.mark.parametrize("scheme", ["w8a8-pc", "w4a8-pt"])
@pytest.mark.parametrize("model", list(MODELS))
def test_the_inference_copy_gives_the_quantsims_logits_bit_for_bit(model: str, scheme: str, ort: bool) -> None:
    torch.manual_seed(0)
    qsim = _calibrated(MODELS[model](), scheme, ort)
    data = generate(0, "test", 64)
    x = data.normalize(data.images)
    with torch.inference_mode():
        assert torch.equal(for_inference(qsim)(x), qsim(x))


def test_minmax_calibrated_relu6_clamps_are_dropped_and_the_quantsim_is_untouched() -> None:
    torch.manual_seed(0)
    qsim = _calibrated(_trained_like(quick_mobilenet_v2(10)), "w8a8-pc", True)
    relu6 = sum(isinstance(m, nn.ReLU6) for m in qsim.model.modules())
    before = len(qsim.model.graph.nodes)
    fast = for_inference(qsim)
    assert relu6 > 0 and len(fast.graph.nodes) == before - relu6  # every one: minmax ranges lie in [0, 6]
    assert len(qsim.model.graph.nodes) == before


def test_a_clamp_the_quantizer_does_not_make_is_kept() -> None:
    """A quantizer whose range reaches below the ReLU's 0 (zero point inside the range) does not clamp at 0: the
    ReLU stays, and the logits still equal the QuantSim's."""
    torch.manual_seed(0)
    qsim = _calibrated(_trained_like(quick_mobilenet_v2(10)), "w8a8-pc", True)
    for q in qsim.act_quantizers.values():
        assert q.scale is not None
        q.set_qparams(q.scale, torch.tensor(128))  # codes 0..255 around zero point 128: negatives representable
    gm = for_inference(qsim)
    assert drop_redundant_clamps(gm) == 0
    assert any(isinstance(m, nn.ReLU6) for m in gm.modules())
    data = generate(0, "test", 32)
    x = data.normalize(data.images)
    with torch.inference_mode():
        assert torch.equal(gm(x), qsim(x))
