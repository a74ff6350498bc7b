"""Leaderboards are derived from records only: newest record per cell, deltas to fp32, all formats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from mqbench.report import leaderboard
from mqbench.store import SCHEMA, SCHEMA_VERSION, LoadResult, Store


def rec(pipeline: str, scheme: str, top1: float | None, created: str, status: str = "ok", h: str | None = None,
        model: str = "m") -> dict:
    r = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "record_id": created[-6:] + "x" * 26,
         "created": created, "config_hash": h or f"{model}-{pipeline}-{scheme}", "status": status, "suite": "quick",
         "config": {"dataset": "synthetic", "model": model, "weights": "w", "pipeline": pipeline, "backend": "simulated",
                    "scheme": scheme, "seed": 0, "eval_limit": None},
         "provenance": {"cpu": {"model": "CPU X"}, "threads": 2, "torch": "2.13.0"}}
    if top1 is not None:
        acc = {"n": 1000, "top1": {"value": top1, "ci95": [top1 - 0.02, top1 + 0.02]},
               "top5": {"value": 0.99, "ci95": [0.98, 1.0]}}
        r["metrics"] = {"sim": {"accuracy": acc}}
    if status == "failed":
        r["error"] = {"type": "RuntimeError", "message": "boom"}
    return r


def test_rows_newest_wins_and_delta_to_fp32() -> None:
    records = [rec("fp32", "fp32", 0.9, "2026-01-01T00:00:01"), rec("minmax", "w8a8-pt", 0.5, "2026-01-01T00:00:02"),
               rec("minmax", "w8a8-pt", 0.8, "2026-01-01T00:00:03"),
               rec("boom", "w8a8-pt", None, "2026-01-01T00:00:04", status="failed")]
    rows = leaderboard.rows_from_records(records)
    assert [(r["pipeline"], r["status"]) for r in rows] == [("fp32", "ok"), ("boom", "failed"), ("minmax", "ok")]
    mm = rows[2]
    assert mm["top1"] == 0.8 and abs(mm["delta_top1"] - (-0.1)) < 1e-12 and mm["evaluated"] == "sim"
    assert rows[1]["note"] == "RuntimeError: boom" and rows[1]["top1"] is None


def test_formats_render_the_same_numbers_deterministically(tmp_path: Path) -> None:
    records = [rec("fp32", "fp32", 0.9, "2026-01-01T00:00:01"), rec("minmax", "w8a8-pc", 0.8875, "2026-01-01T00:00:02")]
    # The method's cost is its transform / calibrate / refine steps, not loading or evaluation.
    records[1]["timings_s"] = {"load_data": 3.0, "transform:cle": 0.25, "calibrate:minmax": 10.0,
                               "refine:adaround": 500.0, "evaluate_sim": 120.0}
    loaded = LoadResult(records=records, problems=[(tmp_path / "junk.json", "not valid JSON")])
    md = leaderboard.render_markdown(loaded)
    assert "| minmax | w8a8-pc | simulated | 88.75 [86.75, 90.75] | 99.00 | -1.25 | best | 1000 |  |  |  | 510.2 |  |" in md
    assert "skipped junk.json: not valid JSON" in md and "Measured on: CPU X (2 threads), torch 2.13.0." in md
    assert md == leaderboard.render_markdown(loaded)
    rows = list(csv.DictReader(io.StringIO(leaderboard.render_csv(loaded))))
    assert [r["top1"] for r in rows] == ["0.9", "0.8875"] and list(rows[0]) == list(leaderboard.FIELDS)
    js = json.loads(leaderboard.render_json(loaded))
    assert js["schema_version"] == 1 and js["rows"][1]["delta_top1"] < 0 and js["problems"][0]["file"] == "junk.json"


def test_mixed_machines_are_flagged() -> None:
    a = rec("fp32", "fp32", 0.9, "2026-01-01T00:00:01")
    b = rec("minmax", "w8a8-pt", 0.8, "2026-01-01T00:00:02")
    b["provenance"] = {**b["provenance"], "torch": "2.12.0"}
    assert "WARNING: records from several machines" in leaderboard.render_markdown(LoadResult([a, b]))


def test_leaderboard_from_a_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append(rec("fp32", "fp32", 0.9, "2026-01-01T00:00:01.000001+00:00"))
    assert "| fp32 | fp32 | simulated | 90.00" in leaderboard.render_markdown(store.load())


def _with_outcomes(r: dict, outcomes: list[bool], images: str = "fp-A") -> dict:
    from mqbench.metrics.accuracy import pack_bits
    n = len(outcomes)
    top1 = sum(outcomes) / n
    r["metrics"]["sim"]["accuracy"].update(n=n, top1={"value": top1, "ci95": [top1 - 0.01, top1 + 0.01]},
                                           top1_outcomes=pack_bits(__import__("torch").tensor(outcomes)))
    r["data"] = {"eval": {"fingerprint": images}}
    return r


def test_paired_significance_marks_rows() -> None:
    base = [True] * 80 + [False] * 20
    close = [True] * 79 + [False] * 21  # one image differs: not significant
    far = [True] * 50 + [False] * 50  # 30 images lost: significant
    records = [_with_outcomes(rec("fp32", "fp32", 0.8, "2026-01-01T00:00:01"), base),
               _with_outcomes(rec("cle", "w8a8-pt", 0.79, "2026-01-01T00:00:02"), close),
               _with_outcomes(rec("minmax", "w8a8-pt", 0.5, "2026-01-01T00:00:03"), far),
               _with_outcomes(rec("other", "w8a8-pt", 0.5, "2026-01-01T00:00:04"), far, images="fp-B")]
    rows = {r["pipeline"]: r for r in leaderboard.rows_from_records(records)}
    assert rows["cle"]["p_vs_fp32"] == 1.0 and rows["cle"]["best_in_scheme"]
    assert rows["minmax"]["p_vs_fp32"] < 1e-6 and rows["minmax"]["p_vs_best"] < 1e-6
    assert rows["other"]["p_vs_fp32"] is None  # other images: no paired test
    md = leaderboard.render_markdown(LoadResult(records))
    assert "| -30.00* | < best (p=" in md and "| -1.00 | best |" in md and "McNemar" in md


def test_real_kernel_rows_show_the_deployed_accuracy_the_simulated_one_and_their_agreement() -> None:
    deployed = rec("minmax", "w8a8-pc", 0.80, "2026-01-01T00:00:02")
    deployed["config"]["backend"] = "ort-qdq"
    deployed["metrics"]["deployed"] = {"accuracy": {"n": 1000, "top1": {"value": 0.79, "ci95": [0.77, 0.81]},
                                                    "top5": {"value": 0.95, "ci95": [0.94, 0.96]}}}
    deployed["agreement"] = {"top1_agreement": 0.996, "images": 1000, "logit_sqnr_db": 31.5, "max_abs_logit_diff": 0.4}
    row = leaderboard.rows_from_records([deployed])[0]
    assert (row["evaluated"], row["top1"], row["sim_top1"], row["agreement"], row["logit_sqnr_db"]) == (
        "deployed", 0.79, 0.80, 0.996, 31.5)
    md = leaderboard.render_markdown(LoadResult(records=[deployed], problems=[]))
    assert "| minmax | w8a8-pc | ort-qdq | 79.00 [77.00, 81.00] | 95.00 |" in md and "| 80.00 | 99.60 |" in md
    # The integer simulation's agreement, and operators the runtime ran in float, are shown.
    deployed["agreement_integer_sim"] = {"top1_agreement": 1.0, "images": 1000, "logit_sqnr_db": None,
                                         "max_abs_logit_diff": 0.0}
    deployed["deployment"] = {"3x224x224": {"float_compute_ops": {"FusedConv": 35}, "integer_ops": 29, "ops": {}}}
    row = leaderboard.rows_from_records([deployed])[0]
    assert row["agreement_int_sim"] == 1.0 and row["note"] == "float ops: FusedConv x35"
    md = leaderboard.render_markdown(LoadResult(records=[deployed], problems=[]))
    assert "| 80.00 | 99.60 | 100.00 |" in md and "float ops: FusedConv x35" in md


def test_latency_table_shows_the_records_medians_throughput_speedup_and_size() -> None:
    r = rec("minmax", "w8a8-pc", 0.78, "2026-01-01T00:00:02")
    r["config"]["backend"] = "ort-qdq"

    def timing(ms: float, batch: int) -> dict:
        return {"median_ms": ms, "images_per_s": 1e3 * batch / ms}

    r["latency"] = {"cores": 2, "size_bytes": {"deployed": 3_500_000, "float": 14_000_000},
                    "deployed": {"batch1_threads1": timing(3.0, 1), "batch1_threads2": timing(2.0, 1),
                                 "batch32_threads1": timing(100.0, 32), "batch32_threads2": timing(50.0, 32)},
                    "float": {"batch32_threads2": timing(150.0, 32)}, "speedup": {"batch32_threads2": 3.0}}
    null = rec("minmax", "w8a8-pc", 0.001, "2026-01-01T00:00:03", h="null")
    null["config"]["backend"] = "null"
    null["plugins"] = {"backend": {"info": {"harness_only": True}}}
    md = leaderboard.render_markdown(LoadResult(records=[r, null], problems=[]))
    assert "| b1 ms 1t | b1 ms 2t | b32 img/s 1t | b32 img/s 2t | float b32 img/s 2t | speedup | MB |" in md
    assert "| minmax | w8a8-pc | ort-qdq | 3.00 | 2.00 | 320 | 640 | 213 | 3.00x | 3.50 |" in md
    rows = {row["backend"]: row for row in leaderboard.rows_from_records([r, null])}
    assert rows["ort-qdq"]["best_in_scheme"] and rows["null"]["p_vs_best"] is None  # null is never ranked
    assert rows["ort-qdq"]["note"] == ""


def test_int8_slower_than_its_runtimes_float_is_flagged_with_the_cause() -> None:
    r = rec("minmax", "w8a8-pc", 0.78, "2026-01-01T00:00:02")
    r["config"]["backend"] = "ort-qdq-s8s8"
    r["latency"] = {"cores": 2, "deployed": {"batch32_threads2": {"median_ms": 580.0, "images_per_s": 55.0}},
                    "float": {"batch32_threads2": {"median_ms": 218.0, "images_per_s": 147.0}},
                    "speedup": {"batch32_threads2": 0.37}}
    (row,) = leaderboard.rows_from_records([r])
    assert row["note"] == ("SLOWER THAN FLOAT (0.37x): every arithmetic operator ran on the runtime's integer "
                           "kernels: they are slower than its float ones here")
    r["deployment"] = {"3x224x224": {"float_compute_ops": {"Conv": 24}}}
    (row,) = leaderboard.rows_from_records([r])
    assert row["note"] == "float ops: Conv x24; SLOWER THAN FLOAT (0.37x): operators left in float"
    assert "SLOWER THAN FLOAT (0.37x)" in leaderboard.render_markdown(LoadResult(records=[r], problems=[]))
    r["latency"]["speedup"] = {"batch32_threads2": 1.2}
    assert leaderboard.rows_from_records([r])[0]["note"] == "float ops: Conv x24"


def test_error_accumulation_table_from_analysed_records_only() -> None:
    plain = rec("minmax", "w8a8-pt", 0.08, "2026-01-01T00:00:01")
    analysed = rec("minmax", "w8a8-pt", 0.08, "2026-01-01T00:00:02")  # the same cell, rerun with the analysis
    analysed["layerwise"] = {
        "images": 128, "layers": 53, "final_sqnr_db": -3.71, "final_sqnr_capped": False, "slope_db_per_layer": -0.114,
        "largest_drops": [{"layer": "features.1.conv.0.0", "kind": "depthwise", "drop_db": 28.6, "sqnr_db": 12.0}],
        "worst_local": [{"layer": "features.1.conv.0.0", "kind": "depthwise", "sqnr_db": 12.04}],
        "weight_range_ratio_median_by_kind": {"depthwise": 7.06, "pointwise": 3.1}}
    exact = rec("minmax", "w8a8-pc", 0.79, "2026-01-01T00:00:03")
    exact["layerwise"] = {**analysed["layerwise"], "final_sqnr_db": 150.0, "final_sqnr_capped": True,
                          "slope_db_per_layer": None, "largest_drops": [], "worst_local": []}
    loaded = LoadResult(records=[plain, analysed, exact])
    md = leaderboard.render_markdown(loaded, plots=["plots/sqnr-m.png"])
    assert ("| m (w) | minmax | w8a8-pt | simulated | 128 | -3.7 | -0.11 | features.1.conv.0.0 (28.6) "
            "| features.1.conv.0.0 (depthwise) (12.0) | 7.1 | 8.00 |") in md
    assert "| m (w) | minmax | w8a8-pc | simulated | 128 | >=150 |  |  |  | 7.1 | 79.00 |" in md
    assert "![sqnr-m](plots/sqnr-m.png)" in md
    js = json.loads(leaderboard.render_json(loaded))
    assert [r["final_sqnr_db"] for r in js["error_accumulation"]] == [150.0, -3.71]
    assert "Error accumulation" not in leaderboard.render_markdown(LoadResult(records=[plain]))


def test_a_toolkit_row_is_ranked_against_mqbenchs_best_pipeline_on_its_own_runtime() -> None:
    base = [True] * 80 + [False] * 20
    worse = [True] * 50 + [False] * 50
    records = [_with_outcomes(rec("minmax", "w8a8-pc", 0.79, "2026-01-01T00:00:01"), base),
               _with_outcomes(rec("cle", "w8a8-pc", 0.5, "2026-01-01T00:00:02"), worse),
               _with_outcomes(rec("nncf:performance", "w8a8-pc", 0.5, "2026-01-01T00:00:03"), worse),
               _with_outcomes(rec("ort:minmax", "w8a8-pc", 0.8, "2026-01-01T00:00:04"), base)]
    other = _with_outcomes(rec("percentile", "w8a8-pc", 0.99, "2026-01-01T00:00:05"), [True] * 100)
    other["config"]["backend"] = "ort-qdq"  # another runtime's pipeline is not this runtime's best
    rows = {r["pipeline"]: r for r in leaderboard.rows_from_records([*records, other])}
    assert rows["nncf:performance"]["toolkit_row"] and not rows["cle"]["toolkit_row"]
    assert rows["nncf:performance"]["mqbench_best"] == "minmax" and rows["nncf:performance"]["p_vs_mqbench_best"] < 1e-6
    assert rows["ort:minmax"]["mqbench_best"] == "minmax" and rows["ort:minmax"]["p_vs_mqbench_best"] == 1.0
    assert rows["minmax"]["mqbench_best"] is None and leaderboard.is_toolkit("pt2e:xnnpack(calib_batch=8)")
    assert not leaderboard.is_toolkit("percentile(percentile=99.9)")
