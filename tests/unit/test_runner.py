"""The runner: expansion, pipelines, config hashes, a cell's flow, failures stored not raised."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mqbench import harness
from mqbench.backends.ort.mlas import sums_pairs_in_int16
from mqbench.backends.ort.runtime import cpu_isa
from mqbench.errors import UnknownNameError, UsageError
from mqbench.metrics.latency import LatencySettings
from mqbench.plugins import BUILTIN_PLUGINS, Plugins
from mqbench.report import leaderboard
from mqbench.store import Store
from mqbench.suites import QUICK, Suite


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins(builtins=(*BUILTIN_PLUGINS, "tests.fake_plugins"), entry_points=False, disable=set())


def test_quick_suite_expands_to_nine_cells(plugins: Plugins) -> None:
    cells = harness.expand(plugins, QUICK)
    assert len(cells) == 9
    assert {(c.quantizer, c.scheme) for c in cells} == {("fp32", "fp32"), ("minmax", "w8a8-pt"), ("minmax", "w8a8-pc")}
    hashes = {harness.config_hash(harness.cell_config(c, plugins)) for c in cells}
    assert len(hashes) == 9


def test_overrides_replace_a_dimension_and_canonicalise(plugins: Plugins) -> None:
    cells = harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=["minmax"], schemes=["w8a8", "w8a8-pt", "w4a8"])
    assert [(c.model, c.scheme) for c in cells] == [("quick_cnn", "w8a8-pt"), ("quick_cnn", "w4a8-pt")]
    assert harness.expand(plugins, QUICK, models=["quick_cnn"], eval_limit=50)[0].eval_limit == 50


def test_a_composite_suite_is_the_union_of_its_parts_under_its_own_name(plugins: Plugins) -> None:
    part_a = Suite("a", "", "synthetic", ("quick_cnn",), ("fp32", "minmax"), ("simulated",), ("w8a8-pt",))
    part_b = Suite("b", "", "synthetic", ("quick_mobilenet_v1", "quick_cnn"), ("minmax",), ("simulated",),
                   ("w8a8-pc", "w8a8-pt"), calib_size=64)
    both = Suite("both", "", parts=(part_a, part_b))
    cells = harness.expand(plugins, both)
    assert {c.suite for c in cells} == {"both"}
    assert [(c.model, c.quantizer, c.scheme, c.calib_size) for c in cells] == [
        ("quick_cnn", "fp32", "fp32", 256), ("quick_cnn", "minmax", "w8a8-pt", 256),
        ("quick_mobilenet_v1", "minmax", "w8a8-pc", 64), ("quick_mobilenet_v1", "minmax", "w8a8-pt", 64),
        ("quick_cnn", "minmax", "w8a8-pc", 64), ("quick_cnn", "minmax", "w8a8-pt", 64)]
    # --model narrows each part to its own models that match; the other dimensions replace every part's.
    only = harness.expand(plugins, both, models=["quick_mobilenet_v1"], quantizers=["minmax"], schemes=["w8a8-pt"])
    assert [(c.model, c.calib_size) for c in only] == [("quick_mobilenet_v1", 64)]
    assert len(harness.expand(plugins, both, models=["quick_cnn"])) == 4
    with pytest.raises(UsageError, match="no cells of quick_mobilenet_v2; its models: quick_cnn, quick_mobilenet_v1"):
        harness.expand(plugins, both, models=["quick_mobilenet_v2"])
    with pytest.raises(UnknownNameError):
        harness.expand(plugins, both, models=["no_such_model"])
    with pytest.raises(ValueError, match="composite suite"):
        Suite("bad", "", "synthetic", parts=(part_a,))
    with pytest.raises(ValueError, match="needs a dataset"):
        Suite("bad", "")


def test_config_hash_is_stable_and_sensitive() -> None:
    a = {"model": "m", "scheme": "w8a8-pt", "eval_limit": None}
    assert harness.config_hash(a) == harness.config_hash(dict(reversed(a.items())))
    assert harness.config_hash(a) != harness.config_hash({**a, "eval_limit": 100})


@pytest.mark.parametrize(("pipeline", "message"), [
    ("fp32+minmax", "does not quantize"), ("boom+minmax", "two calibrate steps for the activations"),
    ("minmax+minmax", "twice"), ("minmax+", "malformed"), ("bias_correction", "refine step 'bias_correction' without a "
                                                                            "calibrate step"),
    ("cle", "no calibrate step"), ("mse+minmax(targets=weights)", "two calibrate steps for the weights"),
    ("minmax(targets=activations)", "no calibrate step sets the weight ranges"),
    ("percentile(percentile=20)", "percentile must be in"), ("mse(bogus=1)", "has no parameter 'bogus'"),
    ("mse(candidates)", "write key=value"), ("mse(", "malformed"),
    ("msqe(targets=all)", "msqe calibrates weights only"), ("adaround", "without a calibrate step"),
    ("cle(absorb=maybe)+mse", "'absorb' of method cle must be true or false"),
    ("mse(candidates=abc)", "'candidates' of method mse must be an integer"),
    ("mse(candidates=2.5)", "must be an integer"), ("percentile(percentile=true)", "must be a number"),
])
def test_impossible_pipelines_are_rejected(plugins: Plugins, pipeline: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        harness.parse_pipeline(pipeline, plugins)


def test_step_parameters_parse_and_canonicalise(plugins: Plugins) -> None:
    steps = harness.parse_pipeline("cle + percentile( percentile=99.9 ,targets=all)+bias_correction", plugins)
    assert harness.pipeline_name(steps) == "cle+percentile(percentile=99.9)+bias_correction"
    assert steps[1].config.percentile == 99.9  # type: ignore[attr-defined]
    split = harness.parse_pipeline("mse(targets=activations)+minmax(targets=weights)", plugins)
    assert harness.pipeline_name(split) == "minmax(targets=weights)+mse(targets=activations)"  # weight ranges first
    cells = harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=["percentile(percentile=99.9)"],
                          schemes=["w8a8"])
    config = harness.cell_config(cells[0], plugins)
    assert config["steps"][0]["config"]["percentile"] == 99.9
    default = harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=["percentile"], schemes=["w8a8"])
    assert harness.config_hash(config) != harness.config_hash(harness.cell_config(default[0], plugins))


def test_scheme_conflicts_fail_before_any_work(plugins: Plugins) -> None:
    with pytest.raises(UsageError, match="does not calibrate activations, which scheme w8a8-pt quantizes"):
        harness.expand(plugins, QUICK, quantizers=["minmax(targets=weights)"], schemes=["w8a8"])
    assert harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=["minmax(targets=weights)"], schemes=["w4"])
    # Power-of-two scales to a method without them, and the reverse; asymmetric weights to hardware-friendly ones.
    for pipeline, scheme, message in (("minmax+lsq", "w4-pow2", "lsq learns real-valued scales"),
                                      ("minmax+tqt", "w4-pc", "tqt learns power-of-two scales"),
                                      ("msqe", "w4-asym", "msqe chooses symmetric"),
                                      ("msqe", "w4a8", "does not calibrate activations")):
        with pytest.raises(UsageError, match=message):
            harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=[pipeline], schemes=[scheme])
    assert harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=["msqe+tqt"], schemes=["w4-pow2"])
    assert harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=["msqe+mse(targets=activations)+lsq"],
                         schemes=["w4a8-pc"])


def test_unknown_names_fail_before_any_work(plugins: Plugins) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'quick_cnn'"):
        harness.expand(plugins, QUICK, models=["quick_cn"])
    with pytest.raises(UnknownNameError, match="did you mean 'minmax'"):
        harness.expand(plugins, QUICK, quantizers=["minmx"])
    with pytest.raises(UnknownNameError, match="did you mean 'simulated'"):
        harness.expand(plugins, QUICK, runtimes=["simulate"])


def test_cells_run_fail_and_skip_into_records(plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    cells = harness.expand(plugins, QUICK, models=["tiny_test_cnn"], quantizers=["fp32", "minmax", "boom"],
                          runtimes=["picky"], schemes=["w8a8-pt", "w8a8-pc"], eval_limit=300)
    store = Store(tmp_path / "results")
    ws = harness.Workspace(plugins)
    summary = harness.run(cells, store, ws)
    by = {(r["config"]["pipeline"], r["config"]["scheme"]): r for r in summary.records}
    assert by[("fp32", "fp32")]["status"] == "ok"
    ok = by[("minmax", "w8a8-pt")]
    assert ok["status"] == "ok" and ok["metrics"]["sim"]["accuracy"]["n"] == 300
    assert ok["weights"]["sha256"] and ok["data"]["eval"]["size"] == 300 and ok["data"]["calib"]["size"] == 256
    assert ok["provenance"]["torch"] and "isa" in ok["provenance"]["cpu"] and ok["provenance"]["threads"] >= 1
    assert ok["plugins"]["methods"][0]["plugin"] == "mqbench.methods.minmax"
    assert set(ok["timings_s"]) >= {"load_data", "load_model", "prepare", "calibrate:minmax", "evaluate_sim"}
    failed = by[("boom", "w8a8-pt")]
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "RuntimeError" and "calibration exploded" in failed["error"]["message"]
    skipped = by[("minmax", "w8a8-pc")]
    assert skipped["status"] == "skipped" and "per-channel" in skipped["skip_reason"]
    assert by[("boom", "w8a8-pc")]["status"] == "skipped"  # the backend refuses before the method runs
    assert [r["config"]["pipeline"] for r in summary.failed] == ["boom"]
    # Resume: ok and skipped cells are not rerun, the failed cell is retried.
    again = harness.run(cells, store, ws)
    assert again.already_stored == 4
    assert [(r["config"]["pipeline"], r["config"]["scheme"]) for r in again.records] == [("boom", "w8a8-pt")]


def test_real_kernel_cells_store_agreement_and_the_kernels_that_ran(plugins: Plugins, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    cells = harness.expand(plugins, QUICK, models=["tiny_test_cnn"], quantizers=["minmax"],
                          runtimes=["ort-qdq", "torch-x86", "null"], schemes=["w8a8-pc", "w4a8-pc"], eval_limit=200)
    fast = LatencySettings(min_runs=3, min_time_s=0.0, warmup_runs=1)
    store = Store(tmp_path / "results")
    summary = harness.run(cells, store, harness.Workspace(plugins, latency=fast))
    by = {(r["config"]["backend"], r["config"]["scheme"]): r for r in summary.records}
    # Fake quantization does not model the int16 saturation of CPUs without VNNI: ort-qdq agrees on 94% of
    # the images there (measured on AVX2), 95%+ elsewhere; the integer simulation predicts every image on both.
    floor = 0.90 if sums_pairs_in_int16(cpu_isa()) else 0.95
    for backend in ("ort-qdq", "torch-x86"):
        ok = by[(backend, "w8a8-pc")]
        assert ok["status"] == "ok", ok.get("error")
        assert {"sim", "deployed"} <= set(ok["metrics"]) and ok["agreement"]["images"] == 200
        assert ok["agreement"]["top1_agreement"] >= floor, (backend, ok["agreement"])
        skipped = by[(backend, "w4a8-pc")]
        assert skipped["status"] == "skipped" and "8-bit weights" in skipped["skip_reason"]
    # ONNX Runtime's arithmetic is modelled: its simulation predicts every image, with identical logits.
    ort_cell = by[("ort-qdq", "w8a8-pc")]
    assert set(ort_cell["metrics"]) == {"sim", "integer_sim", "deployed"}
    assert ort_cell["agreement_integer_sim"]["top1_agreement"] == 1.0
    assert ort_cell["agreement_integer_sim"]["max_abs_logit_diff"] == 0.0
    assert "agreement_integer_sim" not in by[("torch-x86", "w8a8-pc")]  # no model of PyTorch's kernels
    assert by[("ort-qdq", "w8a8-pc")]["deployment"]  # the operators ONNX Runtime ran, per input shape
    summary_ops = next(iter(by[("ort-qdq", "w8a8-pc")]["deployment"].values()))
    assert summary_ops["float_compute_ops"] == {} and summary_ops["ops"].get("QLinearConv", 0) > 0
    cores = len(os.sched_getaffinity(0))
    for backend in ("ort-qdq", "torch-x86", "null"):
        latency = by[(backend, "w8a8-pc")]["latency"]
        assert set(latency["deployed"]) == set(latency["float"]) == {
            f"batch{b}_threads{t}" for b in (1, 32) for t in (1, cores)}
        assert all(v["runs"] >= 3 and v["median_ms"] > 0 for v in latency["deployed"].values())
        assert set(latency["speedup"]) == set(latency["deployed"])
    sizes = by[("ort-qdq", "w8a8-pc")]["latency"]["size_bytes"]
    assert sizes["deployed"] > 0 and sizes["float"] > 0  # the serialised ONNX models (a tiny net: mostly graph)
    null = by[("null", "w8a8-pc")]  # the harness on its own: constant class-0 predictions
    labels = [int(y) for _, ys in harness.Workspace(plugins).split("synthetic", "test", 200).batches(200) for y in ys]
    assert null["metrics"]["deployed"]["accuracy"]["top1"]["correct"] == labels.count(0)
    rows = {r["backend"]: r for r in leaderboard.rows_from_records(store.load().records) if r["scheme"] == "w8a8-pc"}
    assert rows["null"]["p_vs_best"] is None and not rows["null"]["best_in_scheme"]  # not ranked with real rows
    assert rows["ort-qdq"]["ips_b32_tall"] > 0 and rows["ort-qdq"]["size_bytes"] == sizes["deployed"]


def test_a_toolkit_recipe_quantizes_with_its_own_tool_and_runs_where_its_format_runs(
        plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    cells = harness.expand(plugins, QUICK, models=["tiny_test_cnn"], quantizers=["ort:minmax"],
                           runtimes=["ort-qdq", "ort-qoperator", "simulated"], schemes=["w8a8-pc", "w4a8"],
                           eval_limit=100)
    by = {(r["config"]["backend"], r["config"]["scheme"]): r
          for r in harness.run(cells, Store(tmp_path / "results"), harness.Workspace(plugins)).records}
    ok = by[("ort-qdq", "w8a8-pc")]
    assert ok["status"] == "ok", ok.get("error")
    # no QuantSim; the sim is the QDQ file run unfused, which ONNX Runtime's fused int8 kernels follow closely
    assert set(ok["metrics"]) == {"deployed", "sim"} and "layerwise" not in ok
    assert ok["agreement"]["top1_agreement"] >= 0.9 and ok["timings_s"]["evaluate_sim"] > 0
    assert ok["timings_s"]["calibrate:ort"] > 0 and "prepare" not in ok["timings_s"]
    assert ok["plugins"]["toolkit"]["info"]["tool"] == "onnxruntime.quantization.quantize_static"
    assert ok["config"]["quantizer"] == {"toolkit": "ort", "recipe": "minmax",
                                         "config": {"version": 1, "calibrate_method": "MinMax", "calib_batch": 32}}
    assert ok["artifact"]["format"] == "onnx-qdq"
    assert by[("simulated", "w8a8-pc")]["skip_reason"] == (
        "backend simulated cannot run ort:minmax's onnx-qdq artifact: it runs float, quantsim artifacts, not onnx-qdq")
    assert by[("ort-qoperator", "w8a8-pc")]["status"] == "skipped"
    low_bit = next(r for (runtime, scheme), r in by.items() if runtime == "ort-qdq" and scheme.startswith("w4a8"))
    assert low_bit["skip_reason"].startswith("backend ort-qdq cannot run w4a8")


def test_a_toolkit_recipe_is_checked_before_any_work(plugins: Plugins) -> None:
    for text, message in (("ort:mse", "toolkit ort has no recipe 'mse'; its recipes: entropy, minmax"),
                          ("ort:minmax(calib_batch=0)", "calib_batch must be at least 1, got 0"),
                          ("ort:minmax(bins=3)", "ort:minmax has no parameter 'bins'"),
                          ("ort:", "malformed toolkit recipe")):
        with pytest.raises(UsageError, match=re.escape(message)):
            harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=[text], runtimes=["ort-qdq"],
                           schemes=["w8a8-pc"])
    with pytest.raises(UsageError, match=re.escape("'ort-default' is now the toolkit recipe ort:minmax")):
        harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=["minmax"], runtimes=["ort-default"])
    recipe = harness.parse_quantizer("ort:entropy(calib_batch=16)", plugins)
    assert recipe.name == "ort:entropy(calib_batch=16)"  # the canonical text names only what differs


def test_a_backend_whose_runtime_is_missing_is_reported_and_its_cells_skipped(
        plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mqbench.backends.ort import runtime as ort_int8

    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ort_int8, "_missing_runtime", lambda: "onnxruntime is not installed (pip install onnxruntime)")
    cells = harness.expand(plugins, QUICK, models=["tiny_test_cnn"], quantizers=["minmax"], runtimes=["ort-qdq"],
                          schemes=["w8a8-pc"], eval_limit=50)
    record = harness.run(cells, Store(tmp_path / "results"), harness.Workspace(plugins)).records[0]
    assert record["status"] == "skipped"
    assert record["skip_reason"] == ("backend ort-qdq is unavailable: onnxruntime is not installed "
                                     "(pip install onnxruntime)")


def test_a_cell_reporting_nan_is_stored_as_failed_not_lost(plugins: Plugins, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    cells = harness.expand(plugins, QUICK, models=["tiny_test_cnn"], quantizers=["nan_notes", "minmax"],
                          schemes=["w8a8-pt"], eval_limit=50)
    store = Store(tmp_path / "results")
    summary = harness.run(cells, store, harness.Workspace(plugins))
    by = {r["config"]["pipeline"]: r for r in summary.records}
    assert by["minmax"]["status"] == "ok"  # the run went on
    failed = by["nan_notes"]
    assert failed["status"] == "failed" and failed["error"]["type"] == "NonFiniteValue"
    assert "method_notes.nan_notes.loss" in failed["error"]["message"]
    assert "method_notes.nan_notes.steps.1" in failed["error"]["message"]
    assert failed["method_notes"]["nan_notes"] == {"loss": None, "steps": [1.0, None]}
    assert failed["metrics"]["sim"]["accuracy"]["n"] == 50  # what was measured is kept
    assert len(store.load().records) == 2


def test_the_same_calibrate_steps_in_another_order_are_one_cell(plugins: Plugins) -> None:
    # Issue 23, defect 10: the written order of calibrate steps made two cells (two hashes) of the same work.
    orders = ["mse(targets=activations)+minmax(targets=weights)", "minmax(targets=weights)+mse(targets=activations)",
              "cle+mse(targets=activations)+minmax(targets=weights)+bias_correction"]
    cells = [harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=[p], schemes=["w8a8"])[0] for p in orders]
    hashes = [harness.config_hash(harness.cell_config(c, plugins)) for c in cells]
    assert hashes[0] == hashes[1] and hashes[2] not in hashes[:2]
    assert cells[0].quantizer == cells[1].quantizer == "minmax(targets=weights)+mse(targets=activations)"
    # transform and refine steps keep the order they were written in
    assert cells[2].quantizer == "cle+minmax(targets=weights)+mse(targets=activations)+bias_correction"


def test_a_limit_at_or_above_the_split_size_is_the_whole_split(plugins: Plugins) -> None:
    # Issue 23, defect 10: --limit larger than the split made a second cell for the same work.
    test_size = plugins.datasets.get("synthetic").split_size("test")
    assert test_size == 2000

    def cell_hash(limit: int | None) -> str:
        cell = harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=["minmax"], schemes=["w8a8"],
                             eval_limit=limit)[0]
        return harness.config_hash(harness.cell_config(cell, plugins))

    assert cell_hash(None) == cell_hash(test_size) == cell_hash(10 * test_size)
    assert cell_hash(test_size - 1) != cell_hash(None)


def test_a_record_that_breaks_the_schema_is_stored_as_its_cells_failure(plugins: Plugins, tmp_path: Path) -> None:
    # A metric plugin that returns the wrong types must fail its cell, not end the sweep with a traceback.
    cells = harness.expand(plugins, QUICK, models=["quick_cnn"], quantizers=["minmax"], schemes=["w8a8-pt", "w8a8-pc"])

    class BadMetricExecutor:
        name = "bad-metric"

        def map(self, cells, ws):  # type: ignore[no-untyped-def]
            for cell in cells:
                record = harness.new_record(cell, plugins)
                record.update(metrics={"sim": {"accuracy": "oops"}}, executor={"name": self.name})
                yield record

    store = Store(tmp_path)
    summary = harness.run(cells, store, harness.Workspace(plugins), executor=BadMetricExecutor())
    stored = store.load()
    assert stored.problems == [] and len(stored.records) == 2
    for r in stored.records:
        assert r["status"] == "failed" and "metrics" not in r and r["error"]["type"] == "InvalidRecord"
        assert r["error"]["message"] == ("the cell's record is invalid: field 'metrics.sim.accuracy' is a str, "
                                         "expected object")
    assert len(summary.failed) == 2


def test_runtimes_that_place_quantizers_alike_share_one_quantsim_and_the_float_latency(
        plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ort-qdq and ort-qoperator place quantizers alike: the second cell copies the first one's calibrated QuantSim
    and simulation (and says so); its figures equal those of the same cell run on its own. The float model's latency
    on one runtime is measured once for the cells of both schemes."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    fast = LatencySettings(batch_sizes=(1,), threads=(1,), min_runs=3, min_time_s=0.0, warmup_runs=0)
    cells = harness.expand(plugins, QUICK, models=["tiny_test_cnn"], quantizers=["minmax"],
                           runtimes=["ort-qdq", "ort-qoperator", "torch-x86"], schemes=["w8a8-pc", "w8a8-pt"],
                           eval_limit=100)
    summary = harness.run(cells, Store(tmp_path / "sweep"), harness.Workspace(plugins, latency=fast))
    by = {(r["config"]["backend"], r["config"]["scheme"]): r for r in summary.records}
    assert all(r["status"] == "ok" for r in by.values()), [r.get("error") for r in by.values()]
    for scheme in ("w8a8-pc", "w8a8-pt"):
        first, second = by[("ort-qdq", scheme)], by[("ort-qoperator", scheme)]
        assert "quantsim_reused_in_process" not in first
        assert second["quantsim_reused_in_process"]["from_backend"] == "ort-qdq"
        assert "calibrate:minmax" in second["quantsim_reused_in_process"]["timings_s"]
        assert "calibrate:minmax" not in second["timings_s"] and "evaluate_sim" not in second["timings_s"]
        assert second["metrics"]["sim"] == first["metrics"]["sim"]
        assert "quantsim_reused_in_process" not in by[("torch-x86", scheme)]  # float biases: another placement
    alone = harness.run([c for c in cells if (c.runtime, c.scheme) == ("ort-qoperator", "w8a8-pc")],
                        Store(tmp_path / "alone"), harness.Workspace(plugins, latency=fast)).records[0]
    assert "quantsim_reused_in_process" not in alone
    shared = by[("ort-qoperator", "w8a8-pc")]
    assert {k: alone["metrics"][k] for k in ("sim", "integer_sim", "deployed")} == {
        k: shared["metrics"][k] for k in ("sim", "integer_sim", "deployed")}
    for runtime in ("ort-qdq", "ort-qoperator", "torch-x86"):
        pc, pt = by[(runtime, "w8a8-pc")]["latency"], by[(runtime, "w8a8-pt")]["latency"]
        assert "float_reused_in_process" not in pc and pt["float_reused_in_process"] is True
        assert pt["float"] == pc["float"]


def test_pipelines_sharing_their_calibrate_steps_share_one_calibration(plugins: Plugins, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``minmax`` and ``minmax+bias_correction`` calibrate alike: the second cell copies the first one's calibrated
    QuantSim (and says so, with what the calibration cost) and refines the copy; its figures equal those of the same
    cell run on its own, and the leaderboard's method seconds count the reused calibration."""
    monkeypatch.setenv("MQBENCH_CACHE", str(tmp_path / "cache"))
    cells = harness.expand(plugins, QUICK, models=["tiny_test_cnn"], quantizers=["minmax", "minmax+bias_correction",
                                                                                  "mse+bias_correction"],
                           schemes=["w8a8-pc"], eval_limit=100)
    records = harness.run(cells, Store(tmp_path / "sweep"), harness.Workspace(plugins)).records
    by = {r["config"]["pipeline"]: r for r in records}
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert "calibration_reused_in_process" not in by["minmax"]
    reused = by["minmax+bias_correction"]["calibration_reused_in_process"]
    assert reused["steps"] == ["minmax"] and "calibrate:minmax" in reused["timings_s"]
    assert "calibrate:minmax" not in by["minmax+bias_correction"]["timings_s"]
    assert "calibration_reused_in_process" not in by["mse+bias_correction"]  # another calibration
    alone = harness.run([c for c in cells if c.quantizer == "minmax+bias_correction"], Store(tmp_path / "alone"),
                        harness.Workspace(plugins)).records[0]
    assert "calibration_reused_in_process" not in alone
    assert alone["metrics"]["sim"] == by["minmax+bias_correction"]["metrics"]["sim"]
    assert alone["method_notes"] == by["minmax+bias_correction"]["method_notes"]
    row = {r["pipeline"]: r for r in leaderboard.rows_from_records(records)}["minmax+bias_correction"]
    assert row["method_s"] >= reused["timings_s"]["calibrate:minmax"] - 0.05
