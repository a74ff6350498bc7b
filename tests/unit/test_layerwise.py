"""Layer-wise error analysis: the pure functions, local vs accumulated error on a network with one layer
quantized, the unquantized case (capped, never NaN), agreement with the QuantSim's own output, and the
attachment the store writes for it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mqbench.data.synthetic import generate
from mqbench.errors import ResultsDirError
from mqbench.metrics.layerwise import (
    SQNR_CAP_DB,
    analyze,
    channel_range_ratio,
    fit_slope,
    layer_points,
    sqnr_db,
    wasserstein1,
)
from mqbench.models.builtin import quick_mobilenet_v2
from mqbench.quant.calibration import calibrate_activations, calibrate_weights, minmax_observer
from mqbench.quant.qsim import QuantSim
from mqbench.schemes import parse_scheme
from mqbench.store import ATTACHMENTS_KEY, SCHEMA, SCHEMA_VERSION, Store


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6()
        self.c3 = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c3(self.r2(self.c2(self.r1(self.c1(x)))))
        return self.fc(torch.flatten(y.mean(dim=(2, 3)), 1))


def _calibrated(model: nn.Module, scheme: str = "w8a8-pt") -> tuple[QuantSim, torch.Tensor]:
    torch.manual_seed(0)
    calib = generate(0, "calib", 32)
    qsim = QuantSim.from_float(model.eval(), parse_scheme(scheme))
    calibrate_weights(qsim, minmax_observer)
    calibrate_activations(qsim, calib, minmax_observer)
    return qsim.eval(), calib.normalize(generate(0, "test", 24).images)


def _only(qsim: QuantSim, layer: str) -> None:
    """Every quantizer off except the weight quantizer of ``layer`` and its output quantizer."""
    qsim.set_mode("off")
    qsim.weight_quantizers[layer].mode = "quantize"
    point = next(p for p in layer_points(qsim) if p.layer == layer)
    assert point.quantizer is not None
    point.quantizer.mode = "quantize"


@pytest.mark.parametrize("layer", ["c1", "c2", "c3", "fc"])
def test_one_layer_quantized_local_equals_accumulated_and_the_rest_has_no_error(layer: str) -> None:
    torch.manual_seed(1)
    qsim, x = _calibrated(TinyNet())
    _only(qsim, layer)
    result = analyze(qsim, x, batch_size=10)
    by_name = {e["layer"]: e for e in result["layers"]}
    quantized = by_name[layer]
    assert not quantized["local"]["sqnr_capped"]
    assert quantized["local"]["sqnr_db"] == pytest.approx(quantized["accumulated"]["sqnr_db"], abs=1e-6)
    assert quantized["local"]["mse"] == pytest.approx(quantized["accumulated"]["mse"], rel=1e-9)
    assert quantized["local"]["mean_shift"] == pytest.approx(quantized["accumulated"]["mean_shift"], abs=1e-9)
    order = [e["layer"] for e in result["layers"]]
    for name in order[: order.index(layer)]:  # upstream: nothing quantized
        assert by_name[name]["accumulated"]["sqnr_capped"] and by_name[name]["accumulated"]["sqnr_db"] == SQNR_CAP_DB
    for name in order:  # every other layer is unquantized alone
        if name != layer:
            assert by_name[name]["local"]["sqnr_capped"]


def test_nothing_quantized_is_capped_not_nan_and_serialisable() -> None:
    qsim, x = _calibrated(TinyNet())
    qsim.set_mode("off")
    result = analyze(qsim, x)
    text = json.dumps(result, allow_nan=False)  # raises on NaN or inf
    assert "NaN" not in text
    for e in result["layers"]:
        for which in ("local", "accumulated"):
            assert e[which]["sqnr_db"] == SQNR_CAP_DB and e[which]["sqnr_capped"]
            assert e[which]["mse"] == 0.0 and e[which]["cosine"] == pytest.approx(1.0)
        assert e["wasserstein1_rel"] == 0.0
    assert result["summary"]["final_sqnr_capped"] and result["summary"]["slope_db_per_layer"] is None
    assert result["summary"]["largest_drops"] == []


def test_accumulated_error_of_the_last_layer_is_the_quantsims_logit_error() -> None:
    torch.manual_seed(2)
    qsim, x = _calibrated(quick_mobilenet_v2(10))
    result = analyze(qsim, x, batch_size=7)
    with torch.inference_mode():
        quantized = qsim(x).double()
        with qsim.float_mode():
            reference = qsim(x).double()
    expected = 10 * math.log10(float(reference.pow(2).sum()) / float((quantized - reference).pow(2).sum()))
    last = result["layers"][-1]
    assert last["kind"] == "linear"
    assert last["accumulated"]["sqnr_db"] == pytest.approx(expected, abs=1e-3)
    assert result["summary"]["final_sqnr_db"] == last["accumulated"]["sqnr_db"]
    # per-tensor quantization of an MobileNet: error grows with depth; depthwise layers are identified
    assert result["summary"]["slope_db_per_layer"] < 0
    assert {e["kind"] for e in result["layers"]} >= {"conv", "depthwise", "pointwise", "linear"}
    assert len(result["layers"]) == len(qsim.layers)


def test_per_channel_weights_lower_the_local_error_of_a_layer_with_disparate_channels() -> None:
    torch.manual_seed(3)
    model = TinyNet()
    with torch.no_grad():
        model.c2.weight[0].mul_(50.0)  # one outlier channel: a per-tensor grid 50x coarser than the others need
    pt = analyze(_calibrated(model, "w8")[0], generate(0, "test", 16).images.float() / 255)
    pc = analyze(_calibrated(model, "w8-pc")[0], generate(0, "test", 16).images.float() / 255)
    c2_pt = next(e for e in pt["layers"] if e["layer"] == "c2")
    c2_pc = next(e for e in pc["layers"] if e["layer"] == "c2")
    assert c2_pt["weight_range"]["ratio_max_median"] > 10
    # the 7 ordinary channels add as much noise as the outlier per tensor, almost none per channel: ~9 dB
    assert c2_pc["local"]["sqnr_db"] > c2_pt["local"]["sqnr_db"] + 5
    assert pt["summary"]["weight_range_ratio_median_by_kind"]["depthwise"] == c2_pt["weight_range"]["ratio_max_median"]


def test_deployed_weights_are_the_ones_analysed() -> None:
    qsim, x = _calibrated(TinyNet())
    before = analyze(qsim, x)["layers"][0]["local"]["sqnr_db"]
    qsim.set_deployed_weight("c1", qsim.layer_weight("c1") * 1.2)  # a method replaced the deployed weight
    after = analyze(qsim, x)
    assert after["layers"][0]["local"]["sqnr_db"] < before - 3
    assert after["layers"][0]["weight_range"]["layer"] == pytest.approx(
        float(qsim.float_weights["c1"].abs().max()))  # ranges: of the float weights


def test_empty_input_is_refused() -> None:
    qsim, x = _calibrated(TinyNet())
    with pytest.raises(ValueError, match="at least one image"):
        analyze(qsim, x[:0])


@given(st.floats(1e-6, 1e6), st.floats(1e-6, 1e6))
def test_sqnr_is_the_power_ratio_in_db_within_the_cap(signal: float, noise: float) -> None:
    value, capped = sqnr_db(signal, noise)
    assert -SQNR_CAP_DB <= value <= SQNR_CAP_DB and not capped
    assert value == pytest.approx(10 * math.log10(signal / noise))


def test_sqnr_edge_cases_are_capped() -> None:
    assert sqnr_db(1.0, 0.0) == (SQNR_CAP_DB, True)
    assert sqnr_db(0.0, 0.0) == (SQNR_CAP_DB, True)
    assert sqnr_db(0.0, 1.0) == (-SQNR_CAP_DB, True)
    assert sqnr_db(1.0, 1e-20) == (SQNR_CAP_DB, True)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=50), st.floats(-10, 10))
def test_wasserstein_of_a_shifted_sample_is_the_shift(values: list[float], shift: float) -> None:
    a = torch.tensor(values, dtype=torch.float64)
    assert wasserstein1(a, a + shift) == pytest.approx(abs(shift), abs=1e-9)
    assert wasserstein1(a, a[torch.randperm(len(values))]) == pytest.approx(0.0, abs=1e-12)


def test_range_ratio_and_slope() -> None:
    assert channel_range_ratio(torch.ones(5)) == 1.0
    assert channel_range_ratio(torch.tensor([1.0, 2.0, 8.0])) == 4.0
    assert channel_range_ratio(torch.tensor([0.0, 0.0, 0.0, 0.5, 2.0])) == 4.0  # zero median: over the smallest > 0
    assert channel_range_ratio(torch.zeros(3)) == 1.0
    assert fit_slope([3.0, 1.0, -1.0, -3.0]) == pytest.approx(-2.0)
    assert fit_slope([1.0]) is None


def _record() -> dict:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "record_id": "a" * 32, "config_hash": "b" * 64,
            "config": {"model": "m", "weights": "w", "dataset": "d", "pipeline": "minmax", "backend": "simulated",
                       "scheme": "w8a8", "seed": 0},
            "status": "ok", "metrics": {}, "created": "2026-11-23T12:00:00.000000+00:00"}


def test_store_writes_attachments_first_and_verifies_them(tmp_path: Path) -> None:
    store = Store(tmp_path)
    record = {**_record(), ATTACHMENTS_KEY: {"layerwise": {"layers": [1, 2, 3]}}}
    path = store.append(record)
    loaded = store.load().records[0]
    assert ATTACHMENTS_KEY not in json.loads(path.read_text())
    ref = loaded["attachments"]["layerwise"]
    assert (tmp_path / ref["path"]).is_file() and ref["path"].startswith("attachments/")
    assert store.attachment(loaded, "layerwise") == {"layers": [1, 2, 3]}
    (tmp_path / ref["path"]).write_text('{"layers": [1, 2, 4]}\n')
    with pytest.raises(ResultsDirError, match="does not match the sha256"):
        store.attachment(loaded, "layerwise")
    (tmp_path / ref["path"]).unlink()
    with pytest.raises(ResultsDirError, match="cannot be read"):
        store.attachment(loaded, "layerwise")
    with pytest.raises(ResultsDirError, match="no 'other' attachment"):
        store.attachment(loaded, "other")


def test_a_stored_cell_answers_an_analysis_request_only_with_enough_analysed_images() -> None:
    from mqbench.harness import Cell
    from mqbench.harness import satisfied as _satisfied

    cell = Cell("m", "w", "d", "minmax", "simulated", "w8a8-pt", layerwise_images=128)
    plain = {"status": "ok", "qparams_summary": {}}
    assert not _satisfied(cell, None) and not _satisfied(cell, plain)
    assert not _satisfied(cell, {**plain, "layerwise": {"images": 64}})
    assert _satisfied(cell, {**plain, "layerwise": {"images": 128}})
    few = {**plain, "data": {"eval": {"size": 50}}}  # an evaluation split smaller than the analysis asked for
    assert _satisfied(cell, {**few, "layerwise": {"images": 50}}) and not _satisfied(cell, few)
    assert _satisfied(Cell("m", "w", "d", "minmax", "simulated", "w8a8-pt"), plain)  # no analysis asked for
    assert _satisfied(cell, {"status": "ok"})  # no QuantSim (fp32, a peer runtime): nothing to analyse
    assert _satisfied(cell, {"status": "skipped"})
    assert _satisfied(cell, {**plain, "layerwise_unavailable": "an fp32 cell quantizes nothing"})
