"""The real CLI end to end: the quick suite cold and cached, resume after a kill, failing plugins,
bad names, corrupt results, unwritable results. The first test trains the three quick models
(about two minutes on 2 cores); the others reuse that cache."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqbench.store import Store
from tests.helpers import REPO, cli_env, mqbench, mqbench_in_process, popen_mqbench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_cache = os.environ.get("MQBENCH_CACHE")
    return Path(env_cache) if env_cache else tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def quick_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """`mqbench run --all` once (trains the models when the cache is cold)."""
    results = tmp_path_factory.mktemp("quick") / "results"
    res = mqbench("run", "--all", "--results", str(results), env=cli_env(cache))
    assert res.returncode == 0, res.stderr[-3000:]
    return results, res.stdout, res.stderr


def _records(results: Path) -> list[dict]:
    loaded = Store(results).load()
    assert loaded.problems == []
    return loaded.records


def test_run_all_gives_the_quick_leaderboard(quick_run: tuple[Path, str, str]) -> None:
    results, stdout, _ = quick_run
    records = _records(results)
    assert len(records) == 9 and all(r["status"] == "ok" for r in records)
    cells = {(r["config"]["model"], r["config"]["pipeline"], r["config"]["scheme"]) for r in records}
    assert len(cells) == 9
    for r in records:
        top1 = r["metrics"]["sim"]["accuracy"]["top1"]["value"]
        if r["config"]["pipeline"] == "fp32":
            assert top1 >= 0.90, (r["config"]["model"], top1)  # the float floor
        assert r["provenance"]["git"].keys() == {"commit", "dirty"}
        assert len(r["weights"]["sha256"]) == 64 and len(r["data"]["eval"]["fingerprint"]) == 64
    for model in ("quick_mobilenet_v1", "quick_mobilenet_v2", "quick_cnn"):
        assert f"{model} (synthetic) on synthetic" in stdout


def test_second_run_runs_no_cell_and_markdown_has_the_same_numbers(quick_run: tuple[Path, str, str],
                                                                   cache: Path) -> None:
    results, _, _ = quick_run
    before = sorted(p.name for p in (results / "records").iterdir())
    res = mqbench("run", "--all", "--results", str(results), env=cli_env(cache))
    assert res.returncode == 0
    assert "9 of 9 cells already stored, not rerun" in res.stderr
    assert sorted(p.name for p in (results / "records").iterdir()) == before
    md = mqbench_in_process("leaderboard", "--format", "md", "--results", str(results), env=cli_env(cache))
    assert md.returncode == 0
    for r in _records(results):
        c, acc = r["config"], r["metrics"]["sim"]["accuracy"]["top1"]
        line = f"| {c['pipeline']} | {c['scheme']} | {c['backend']} | {100 * acc['value']:.2f} ["
        assert line in md.stdout.split(f"## {c['model']} (")[1].split("##")[0]


def _wait_for_records(results: Path, n: int, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (results / "records").is_dir() and len(list((results / "records").glob("*.json"))) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError("no record appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_keeps_finished_cells_and_resumes(quick_run, cache: Path, tmp_path: Path, sig) -> None:
    results = tmp_path / "results"
    proc = popen_mqbench("run", "--all", "--results", str(results), env=cli_env(cache))
    _wait_for_records(results, 1, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    done = _records(results)  # every file present is a complete record
    assert 1 <= len(done) < 9
    res = mqbench("run", "--all", "--results", str(results), env=cli_env(cache))
    assert res.returncode == 0
    assert f"{len(done)} of 9 cells already stored" in res.stderr
    final = _records(results)
    assert len(final) == 9 and len({r["config_hash"] for r in final}) == 9


@pytest.fixture
def boom_env(cache: Path, tmp_path: Path) -> dict[str, str]:
    """An installed plugin (entry point) whose method raises inside the cell."""
    site = tmp_path / "site"
    info = site / "boomtest-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: boomtest\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mqbench]\nboomtest = tests.fake_plugins\n")
    return cli_env(cache, extra_path=site, PYTHONPATH=f"{site}{os.pathsep}{REPO}")


def test_plugin_raising_in_a_cell_fails_only_that_cell(quick_run, boom_env: dict[str, str], tmp_path: Path) -> None:
    results = tmp_path / "r"
    res = mqbench("run", "--model", "quick_cnn", "--method", "boom", "--method", "minmax", "--scheme", "w8a8-pt",
                  "--results", str(results), env=boom_env)
    assert res.returncode == 1
    assert "1 of 2 cells failed" in res.stderr and "RuntimeError: boom: calibration exploded" in res.stderr
    by = {r["config"]["pipeline"]: r for r in _records(results)}
    assert by["minmax"]["status"] == "ok" and by["boom"]["status"] == "failed"
    assert by["boom"]["error"]["type"] == "RuntimeError"


@pytest.mark.parametrize(("args", "expected"), [
    (["run", "--model", "quick_cn"], "unknown model 'quick_cn'; did you mean 'quick_cnn'"),
    (["run", "--all", "--method", "minmx"], "unknown method 'minmx'; did you mean 'minmax'"),
    (["run", "--all", "--backend", "simulate"], "unknown runtime 'simulate'; did you mean 'simulated'"),
    (["run", "--suite", "quik"], "unknown suite 'quik'; did you mean 'quick'"),
    (["run", "--all", "--scheme", "w8a9x"], "malformed scheme 'w8a9x'"),
    (["run", "--all", "--method", "fp32+minmax"], "can only be combined with transform steps"),
    (["run", "--all", "--method", "qf_sepconv+fp32", "--train-budget", "0"], "--train-budget: must be a finite number > 0"),
    (["run"], "nothing to run"),
    (["run", "--all", "--layerwise", "0"], "argument --layerwise: must be a whole number >= 1, got 0"),
    (["run", "--all", "--cpus-per-cell", "2", "--address", "auto"], "--address, --cpus-per-cell only apply to --executor ray"),
    (["run", "--all", "--executor", "ray", "--cpus-per-cell", "0"], "--cpus-per-cell: must be a finite number > 0"),
    (["run", "--all", "--executor", "ray", "--max-retries", "-1"], "--max-retries: must be a whole number from 0 to 100"),
    (["analyze", "--model", "quick_cnn", "--images", "0"], "argument --images: must be a whole number >= 1, got 0"),
    (["analyze", "--model", "quick_cnm"], "unknown model 'quick_cnm'"),
])
def test_usage_errors_exit_2_with_one_line(args: list[str], expected: str, tmp_path: Path) -> None:
    res = mqbench_in_process(*args, "--results", str(tmp_path / "r"), env=cli_env(tmp_path / "cache"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], res.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r").exists()  # no work started


def test_unwritable_results_fail_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    res = mqbench_in_process("run", "--all", "--results", str(tmp_path / "file" / "results"), env=cli_env(tmp_path / "cache"))
    assert res.returncode == 2 and "is not writable" in res.stderr and "--results" in res.stderr
    assert not (tmp_path / "cache").exists()


def test_corrupt_and_foreign_files_are_reported_and_kept(quick_run, cache: Path, tmp_path: Path) -> None:
    results, _, _ = quick_run
    mine = tmp_path / "results"
    (mine / "records").mkdir(parents=True)
    for p in (results / "records").iterdir():
        (mine / "records" / p.name).write_bytes(p.read_bytes())
    (mine / "records" / "broken.json").write_text('{"schema": "mqbench.record", "sche')
    (mine / "records" / "notes.json").write_text('{"author": "someone else"}')

    def digests() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (mine / "records").iterdir()}

    before = digests()
    res = mqbench_in_process("leaderboard", "--format", "md", "--results", str(mine), env=cli_env(cache))
    assert res.returncode == 0
    assert "broken.json: not valid JSON" in res.stderr and "notes.json: not an mqbench record" in res.stderr
    assert "quick_cnn (synthetic) on synthetic" in res.stdout
    res = mqbench("run", "--all", "--results", str(mine), env=cli_env(cache))
    assert res.returncode == 0 and "9 of 9 cells already stored" in res.stderr and "broken.json" in res.stderr
    assert digests() == before


def test_plugins_and_list_commands(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "cache")
    res = mqbench_in_process("plugins", "--json", env=env)
    infos = {p["name"]: p for p in json.loads(res.stdout)}
    assert infos["mqbench.methods.minmax"]["hooks"] == ["mqbench_register_methods"]
    assert all(infos[n]["status"] == "loaded" for n in infos if n.startswith("mqbench."))
    listed = json.loads(mqbench_in_process("list", "methods", "--json", env=env).stdout)
    assert {m["name"]: m["stage"] for m in listed}["minmax"] == "calibrate"
    assert "--force" in mqbench_in_process("run", "--help", env=env).stdout


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MQBENCH_DISABLE_PLUGINS", raising=False)
    yield


def test_missing_data_directory_is_a_usage_error_naming_the_expected_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = mqbench_in_process("run", "--suite", "imagenet", "--results", str(tmp_path / "r"),
                  env=cli_env(tmp_path / "cache", MQBENCH_DATA=str(tmp_path / "empty")))
    assert res.returncode == 2
    assert "dataset imagenet/calib expects" in res.stderr and "calib-1000.parquet, which does not exist" in res.stderr
    assert not (tmp_path / "r").exists()


def test_plugins_and_list_report_a_backend_whose_runtime_is_missing(tmp_path: Path) -> None:
    # A stand-in package that fails to import as a missing onnxruntime does.
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named onnxruntime", name="onnxruntime")\n')
    env = cli_env(tmp_path / "cache", extra_path=tmp_path / "shadow")
    plugins = mqbench("plugins", "--json", env=env)
    assert plugins.returncode == 0, plugins.stderr
    by_name = {p["name"]: p for p in json.loads(plugins.stdout)}
    missing = "onnxruntime is not installed (pip install onnxruntime)"
    assert by_name["mqbench.backends.ort.runtime"]["unavailable_backends"] == {
        "ort-qdq": missing, "ort-qdq-s8s8": missing, "ort-qoperator": missing}
    assert by_name["mqbench.backends.ort.toolkit"]["unavailable_toolkits"] == {"ort": missing}
    assert by_name["mqbench.backends.torch_ao.runtime"]["unavailable_backends"] == {}
    listed = mqbench("list", "backends", "--json", env=env)
    assert {b["name"]: b["unavailable"] for b in json.loads(listed.stdout)}["ort-qdq"].startswith("onnxruntime is not")
    run = mqbench("run", "--model", "quick_cnn", "--method", "minmax", "--backend", "ort-qdq", "--scheme", "w8a8-pc",
                  "--limit", "20", "--results", str(tmp_path / "r"), env=env)
    assert run.returncode == 0, run.stderr
    assert "unavailable: onnxruntime is not installed" in run.stdout + run.stderr


def test_analyze_stores_layerwise_records_plots_and_reuses_them(quick_run, cache: Path, tmp_path: Path) -> None:
    results, plots = tmp_path / "r", tmp_path / "plots"
    env = cli_env(cache)
    # a cell stored without the analysis is rerun once by `analyze` (a newer record), then reused
    res = mqbench("run", "--model", "quick_mobilenet_v2", "--method", "minmax", "--scheme", "w8a8-pt", "--no-latency",
                  "--quiet", "--results", str(results), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    args = ("analyze", "--model", "quick_mobilenet_v2", "--method", "minmax", "--method", "cle+minmax+bias_correction",
            "--method", "fp32", "--scheme", "w8a8-pt", "--images", "64", "--results", str(results), "--plots", str(plots))
    res = mqbench(*args, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "quick_mobilenet_v2 (synthetic) minmax w8a8-pt on simulated: 64 images" in res.stdout
    assert "error accumulation" in res.stdout and "median per layer kind: " in res.stdout
    assert "no layer-wise analysis of quick_mobilenet_v2 fp32 fp32 simulated: an fp32 cell quantizes nothing" in res.stderr
    written = sorted(p.name for p in plots.iterdir())
    assert written == ["sqnr-quick_mobilenet_v2-synthetic-w8a8-pt-simulated.png",
                       "weight-ranges-quick_mobilenet_v2-synthetic.png"]
    assert all((plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in written)
    store = Store(results)
    records = _records(results)
    assert len(records) == 4  # minmax twice (without, then with the analysis), cle+..., fp32
    analysed = [r for r in records if r.get("layerwise")]
    assert sorted(r["config"]["pipeline"] for r in analysed) == ["cle+minmax+bias_correction", "minmax"]
    for r in analysed:
        detail = store.attachment(r, "layerwise")
        assert detail["images"] == 64 and len(detail["layers"]) == r["layerwise"]["layers"] == 26
        assert r["layerwise"]["final_sqnr_db"] == detail["layers"][-1]["accumulated"]["sqnr_db"]
        assert r["timings_s"]["layerwise"] > 0
    res = mqbench(*args, env=env)  # everything stored: nothing reruns
    assert res.returncode == 0 and "3 of 3 cells already stored" in res.stderr
    res = mqbench("run", "--model", "quick_mobilenet_v2", "--method", "minmax", "--scheme", "w8a8-pt", "--no-latency",
                  "--quiet", "--results", str(results), env=env)
    assert res.returncode == 0 and "1 of 1 cells already stored" in res.stderr  # a plain run is answered too
    assert len(_records(results)) == 4
    res = mqbench_in_process("leaderboard", "--format", "md", "--results", str(results), "--plots", str(tmp_path / "p2"), env=env)
    assert res.returncode == 0
    assert "## Error accumulation" in res.stdout and f"]({tmp_path / 'p2'}/sqnr-quick_mobilenet_v2" in res.stdout
    # an altered attachment is named, and nothing is rewritten
    path = results / analysed[0]["attachments"]["layerwise"]["path"]
    path.write_bytes(path.read_bytes()[:-10] + b"        }\n")
    res = mqbench_in_process("leaderboard", "--results", str(results), "--plots", str(tmp_path / "p3"), env=env)
    assert res.returncode == 2 and "does not match the sha256 in its record" in res.stderr and path.name in res.stderr
