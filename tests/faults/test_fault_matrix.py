"""The fault matrix (issue 23): every bad input and fault below goes through the real CLI, and each test asserts the
exit code, a one-line answer without a traceback, and that every stored record (and published file) is unchanged
or complete. The cells use a one-conv model on 64 synthetic images: each run takes seconds."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqbench.store import Store
from tests.faults.conftest import SMALL, assert_one_line_error, digests, env_for, run_cli
from tests.faults.fault_plugins import HOLD_IMPORT_ENV
from tests.helpers import mqbench_in_process

BACKENDS = ("simulated", "ort-qdq", "torch-fbgemm")


def _records(results: Path) -> list[dict]:
    loaded = Store(results).load()
    assert loaded.problems == []
    return loaded.records


# ------------------------------------------------------------------ 1. non-finite logits never score


@pytest.mark.parametrize("weights", ["nan", "negative_bn_var"])
def test_a_model_with_non_finite_logits_is_a_failed_cell_on_every_backend(weights: str, fault_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    results = tmp_path / "r"
    args = ["run", "--model", f"fault_tiny:{weights}", "--method", "fp32", "--method", "minmax", "--scheme", "w8a8-pt"]
    for backend in BACKENDS:
        args += ["--backend", backend]
    res = run_cli(*args, "--results", str(results), *SMALL, env=fault_env)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "6 of 6 cells failed" in res.stderr
    records = _records(results)
    assert len(records) == 6 and all(r["status"] == "failed" and "metrics" not in r for r in records)
    for r in records:
        if r["config"]["pipeline"] == "fp32":  # the float model itself: named evaluation and image count
            which = "sim" if r["config"]["backend"] == "simulated" else "deployed"
            assert r["error"]["type"] == "NonFiniteOutputError"
            assert f"non-finite logits (NaN or inf) on 64 of 64 images in the float {which} evaluation" in \
                r["error"]["message"]
        else:  # calibration sees the NaN first
            assert "NaN" in r["error"]["message"]
    board = mqbench_in_process("leaderboard", "--format", "csv", "--results", str(results), env=fault_env)
    rows = list(csv.DictReader(io.StringIO(board.stdout)))
    assert board.returncode == 0 and len(rows) == 6
    assert all(r["status"] == "failed" and r["top1"] == "" and r["top5"] == "" for r in rows)


def test_a_runtime_returning_nan_names_the_deployed_evaluation_and_the_count(fault_env: dict[str, str],
                                                                             tmp_path: Path) -> None:
    res = run_cli("run", "--model", "fault_tiny:finite", "--method", "minmax", "--backend", "half-nan-runtime",
                  "--scheme", "w8a8-pt", "--results", str(tmp_path / "r"), *SMALL, env=fault_env)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    (record,) = _records(tmp_path / "r")
    assert record["status"] == "failed" and "metrics" not in record
    assert "on 32 of 64 images in the deployed evaluation" in record["error"]["message"]


# ------------------------------------------------------------------ 2. publish touches only its own files


def test_publish_refuses_a_directory_holding_files_it_did_not_write(results_copy: Callable[[], Path],
                                                                    fault_env: dict[str, str]) -> None:
    results = results_copy()
    (results / "plots").mkdir()
    (results / "plots" / "holiday.png").write_bytes(b"\x89PNG mine")
    (results / "index.html").write_text("<p>my own page</p>")
    before = digests(results)
    res = mqbench_in_process("leaderboard", "--publish", "--results", str(results), env=fault_env)
    assert_one_line_error(res, 2, "was not written by `mqbench leaderboard --publish`")
    assert digests(results) == before


def test_publish_of_a_directory_without_records_changes_nothing(fault_env: dict[str, str], tmp_path: Path) -> None:
    results = tmp_path / "r"
    (results / "records").mkdir(parents=True)
    (results / "plots").mkdir()
    (results / "plots" / "keep.png").write_bytes(b"mine")
    before = digests(results)
    res = mqbench_in_process("leaderboard", "--publish", "--results", str(results), env=fault_env)
    assert_one_line_error(res, 2, "nothing to publish")
    assert digests(results) == before


def test_publish_replaces_its_own_files_and_a_failure_midway_leaves_the_old_site(results_copy: Callable[[], Path],
                                                                                fault_env: dict[str, str]) -> None:
    results = results_copy()
    first = mqbench_in_process("leaderboard", "--publish", "--results", str(results), env=fault_env)
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = json.loads((results / ".mqbench-published.json").read_text())["files"]
    assert "index.html" in manifest and any(f.startswith("plots/") for f in manifest)
    again = mqbench_in_process("leaderboard", "--publish", "--results", str(results), env=fault_env)
    assert again.returncode == 0 and not list(results.glob(".publish-*"))
    published = digests(results)
    # A write that fails late (the 3 MB-class page past a 64 KiB file-size limit): the old site stays whole.
    res = run_cli("leaderboard", "--publish", "--results", str(results), env=fault_env, max_file_bytes=64 * 1024)
    assert_one_line_error(res, 2, "the published files are as they were")
    assert digests(results) == published and not list(results.glob(".publish-*"))
    # A step that fails while rendering (an altered attachment): the same.
    (record,) = [r for r in _records(results) if r.get("attachments")]
    attachment = results / record["attachments"]["layerwise"]["path"]
    attachment.write_bytes(attachment.read_bytes().replace(b"1", b"2", 1))
    published = digests(results)
    res = mqbench_in_process("leaderboard", "--publish", "--results", str(results), env=fault_env)
    assert_one_line_error(res, 2, "does not match the sha256 in its record")
    assert digests(results) == published


def test_publish_into_an_impossible_directory_is_one_line(fault_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    res = mqbench_in_process("leaderboard", "--publish", "--results", str(tmp_path / "file" / "results"), env=fault_env)
    assert_one_line_error(res, 2, "does not exist")


# ------------------------------------------------------------------ 3. records with wrong field types


MUTATIONS: dict[str, Callable[[dict], None]] = {
    "metrics is a string": lambda r: r.update(metrics="oops"),
    "config is empty": lambda r: r.update(config={}),
    "top-1 is text": lambda r: r["metrics"]["sim"]["accuracy"]["top1"].update(value="high"),
    "top-1 above 1": lambda r: r["metrics"]["sim"]["accuracy"]["top1"].update(value=1.5),
    "outcomes of another length": lambda r: r["metrics"]["sim"]["accuracy"].update(top1_outcomes="ff"),
    "timings are a list": lambda r: r.update(timings_s=[1, 2]),
    "provenance cpu is a number": lambda r: r["provenance"].update(cpu=3),
    "seed is text": lambda r: r["config"].update(seed="zero"),
    "ok without metrics": lambda r: r.pop("metrics"),
}


def test_records_with_wrong_field_types_are_listed_by_name_and_left_out(results_copy: Callable[[], Path],
                                                                       fault_env: dict[str, str]) -> None:
    results = results_copy()
    good = next(r for r in _records(results) if r["config"]["pipeline"] == "minmax" and not r.get("attachments"))
    names = {}
    for i, mutation in enumerate(sorted(MUTATIONS)):
        bad = json.loads(Path(good["_path"]).read_text())
        bad["record_id"] = f"{i:032x}"
        MUTATIONS[mutation](bad)
        names[mutation] = f"bad-{i}.json"
        (results / "records" / names[mutation]).write_text(json.dumps(bad))
    before = digests(results)
    for fmt in ("rich", "md", "csv", "json"):
        res = mqbench_in_process("leaderboard", "--format", fmt, "--results", str(results), env=fault_env)
        assert res.returncode == 0 and "Traceback" not in res.stderr, (fmt, res.stderr[-2000:])
        for mutation, name in names.items():
            assert re.search(rf"warning: skipped \S*{name}: (field|a record)", res.stderr), (mutation, res.stderr)
        assert "150.00" not in res.stdout and "high" not in res.stdout  # no bad value reached a table
    res = run_cli("run", "--model", "fault_tiny:finite", "--method", "minmax", "--scheme", "w8a8-pt",
                  "--results", str(results), *SMALL, env=fault_env)
    assert res.returncode == 0 and "1 of 1 cells already stored" in res.stderr
    assert all(name in res.stderr for name in names.values())
    assert digests(results) == before
    res = mqbench_in_process("leaderboard", "--publish", "--results", str(results), env=fault_env)
    assert res.returncode == 0, res.stderr[-2000:]
    left_out = (results / "LEADERBOARD.md").read_text().split("## Left out")[1]
    assert all(name in left_out for name in names.values())
    assert all(digests(results)[k] == v for k, v in before.items())


def test_a_record_holding_nan_is_left_out(results_copy: Callable[[], Path], fault_env: dict[str, str]) -> None:
    results = results_copy()
    path = Path(next(r for r in _records(results) if r["config"]["pipeline"] == "minmax")["_path"])
    text = path.read_text()
    (results / "records" / "nan.json").write_text(
        re.sub(r'"value": [0-9.e-]+', '"value": NaN', text, count=1).replace(path.stem[-8:], "nan00000"))
    res = mqbench_in_process("leaderboard", "--format", "md", "--results", str(results), env=fault_env)
    assert res.returncode == 0 and "nan.json: field 'metrics.sim.accuracy.top1.value' is nan" in res.stderr


# ------------------------------------------------------------------ 4. disk full


def test_disk_full_while_storing_stops_the_run_with_one_line_and_nothing_half_written(
        results_copy: Callable[[], Path], fault_env: dict[str, str]) -> None:
    results = results_copy()
    before = digests(results)
    res = run_cli("run", "--model", "fault_tiny:finite", "--method", "percentile", "--method", "mse", "--scheme",
                  "w8a8-pt", "--results", str(results), *SMALL, env=fault_env, max_file_bytes=2048)
    line = assert_one_line_error(res, 2, "cannot store the record of fault_tiny")
    assert "File too large" in line and "0 of 2 cells of this run were stored" in line and "run the same command" in line
    assert digests(results) == before  # no new file, not even a temp file or an attachment


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root and mount rights")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_really_full_disk_and_a_read_only_one(small_filesystem: Path, results_copy: Callable[[], Path],
                                                fault_env: dict[str, str]) -> None:
    results = small_filesystem / "results"
    shutil.copytree(results_copy(), results)
    before = digests(results)
    filler = small_filesystem / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last block
        while os.write(fd, b"\0" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    res = run_cli("run", "--model", "fault_tiny:finite", "--method", "percentile", "--scheme", "w8a8-pt",
                  "--results", str(results), *SMALL, env=fault_env)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "No space left on device" in res.stderr.strip().splitlines()[-1]
    assert digests(results) == before
    filler.unlink()
    ok = run_cli("leaderboard", "--publish", "--results", str(results), env=fault_env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    published = digests(results)
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], capture_output=True).returncode == 0
    res = run_cli("leaderboard", "--publish", "--results", str(results), env=fault_env)
    assert_one_line_error(res, 2, "Read-only file system")
    res = run_cli("run", "--model", "fault_tiny:finite", "--method", "percentile", "--scheme", "w8a8-pt",
                  "--results", str(results), *SMALL, env=fault_env)
    assert_one_line_error(res, 2, "is not writable")
    assert digests(results) == published


# ------------------------------------------------------------------ 5. a plugin that fails registers nothing


def test_a_plugin_failing_on_a_name_collision_withdraws_what_it_registered(fault_root: Path, tmp_path: Path) -> None:
    env = env_for(fault_root, "site-colliding")
    infos = {p["name"]: p for p in json.loads(run_cli("plugins", "--json", env=env).stdout)}
    assert infos["collidingtest"]["status"] == "failed" and infos["collidingtest"]["registered"] == {}
    assert "registered twice" in infos["collidingtest"]["error"]
    models = {m["name"]: m["plugin"] for m in json.loads(run_cli("list", "models", "--json", env=env).stdout)}
    assert "aaa_first_of_colliding" not in models and models["quick_cnn"] == "mqbench.models.builtin"
    res = run_cli("run", "--model", "aaa_first_of_colliding", "--results", str(tmp_path / "r"), env=env)
    assert_one_line_error(res, 2, "unknown model 'aaa_first_of_colliding'")


# ------------------------------------------------------------------ 6. numeric options


@pytest.mark.parametrize(("option", "value", "allowed"), [
    ("--latency-time", "inf", "a finite number >= 0 and <= 600"),
    ("--latency-time", "nan", "a finite number >= 0 and <= 600"),
    ("--latency-time", "-1", "a finite number >= 0 and <= 600"),
    ("--latency-runs", "2", "a whole number from 3 to 100000"),
    ("--batch-size", "0", "a whole number from 1 to 65536"),
    ("--batch-size", "-4", "a whole number from 1 to 65536"),
    ("--batch-size", "many", "a whole number from 1 to 65536"),
    ("--limit", "0", "a whole number >= 1"),
    ("--train-budget", "nan", "a finite number > 0"),
    ("--layerwise", "-1", "a whole number >= 1"),
])
def test_numeric_options_are_checked_before_any_work(option: str, value: str, allowed: str, fault_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    res = mqbench_in_process("run", "--model", "fault_tiny:finite", option, value, "--results", str(tmp_path / "r"),
                             env=fault_env)
    assert_one_line_error(res, 2, f"argument {option}: must be {allowed}")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ 7. sys.exit in a plugin, Ctrl-C at start-up


def test_sys_exit_in_a_plugin_fails_only_its_cell(fault_env: dict[str, str], tmp_path: Path) -> None:
    res = run_cli("run", "--model", "fault_tiny:finite", "--method", "sys_exit", "--method", "minmax", "--scheme",
                  "w8a8-pt", "--results", str(tmp_path / "r"), *SMALL, env=fault_env)
    assert res.returncode == 1 and "1 of 2 cells failed" in res.stderr and "Traceback" not in res.stderr
    by = {r["config"]["pipeline"]: r for r in _records(tmp_path / "r")}
    assert by["minmax"]["status"] == "ok" and by["sys_exit"]["status"] == "failed"
    assert by["sys_exit"]["error"] == {**by["sys_exit"]["error"], "type": "SystemExit",
                                       "message": "a plugin called sys.exit(3) inside the cell"}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_start_up_prints_one_line_and_exits_130(fault_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "importing"
    env = env_for(fault_root, **{HOLD_IMPORT_ENV: str(marker)})
    proc = subprocess.Popen([sys.executable, "-m", "mqbench", "run", "--all", "--results", str(tmp_path / "r")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "the plugin import never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line_error(res, 130, "interrupted before any cell ran: nothing was stored")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ 8. Markdown and HTML from names and messages


def test_names_and_messages_are_escaped_in_markdown_and_html(fault_env: dict[str, str], tmp_path: Path) -> None:
    results = tmp_path / "r"
    res = run_cli("run", "--model", "<b>evil</b>:finite", "--method", "markdown_boom", "--method", "minmax", "--scheme",
                  "w8a8-pt", "--results", str(results), *SMALL, env=fault_env)
    assert res.returncode == 1
    md = mqbench_in_process("leaderboard", "--format", "md", "--results", str(results), env=fault_env).stdout
    assert mqbench_in_process("leaderboard", "--publish", "--results", str(results), env=fault_env).returncode == 0
    for text in (md, (results / "LEADERBOARD.md").read_text()):
        assert "<b>" not in text and "<script>" not in text
        for table in re.findall(r"(?:^\|.*\|$\n?)+", text, flags=re.M):
            rows = table.strip().splitlines()
            cells = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
            assert len(cells) == 1, rows  # every row of a table has the header's columns
    assert "bad \\| value second &lt;script>" in md
    page = (results / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<b>evil" not in page


# ------------------------------------------------------------------ 9. the umask is honoured


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_records_and_published_files_honour_the_umask(umask: int, mode: int, fault_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    results = tmp_path / "r"
    res = run_cli("run", "--model", "fault_tiny:finite", "--method", "minmax", "--scheme", "w8a8-pt", "--layerwise",
                  "8", "--results", str(results), *SMALL, env=fault_env, umask=umask)
    assert res.returncode == 0, res.stderr[-2000:]
    assert run_cli("leaderboard", "--publish", "--results", str(results), env=fault_env, umask=umask).returncode == 0
    files = [p for p in results.rglob("*") if p.is_file()]
    assert len(files) >= 6  # a record, an attachment, four outputs and a manifest, plots
    assert {p.relative_to(results).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files} == \
        {p.relative_to(results).as_posix(): mode for p in files}
    assert stat.S_IMODE((results / "plots").stat().st_mode) == 0o777 & ~umask


# ------------------------------------------------------------------ 10. the smaller ones


def test_a_limit_above_the_split_and_reordered_calibrate_steps_are_the_stored_cells(fault_env: dict[str, str],
                                                                                    tmp_path: Path) -> None:
    results = tmp_path / "r"
    cell = ["run", "--model", "fault_tiny:finite", "--scheme", "w8a8-pt", "--no-latency", "--quiet",
            "--results", str(results)]
    assert mqbench_in_process(*cell, "--method", "minmax", env=fault_env).returncode == 0  # all 2000 test images
    res = mqbench_in_process(*cell, "--method", "minmax", "--limit", "50000", env=fault_env)
    assert res.returncode == 0 and "1 of 1 cells already stored" in res.stderr
    pipeline = "minmax(targets=weights)+percentile(targets=activations)"
    assert mqbench_in_process(*cell, "--method", pipeline, "--limit", "64", env=fault_env).returncode == 0
    res = mqbench_in_process(*cell, "--method", "percentile(targets=activations)+minmax(targets=weights)",
                             "--limit", "64", env=fault_env)
    assert res.returncode == 0 and "1 of 1 cells already stored" in res.stderr
    assert len(_records(results)) == 2


@pytest.mark.parametrize(("args", "expected"), [
    (["leaderboard", "--results", "/nonexistent/results"], "results directory /nonexistent/results does not exist"),
    (["leaderboard", "--results", ""], "--results is empty"),
    (["run", "--all", "--results", ""], "--results is empty"),
    (["store", "check", "--results", "/nonexistent"], "does not exist"),
    (["run", "--model", "fault_tiny:nope"], "(see `mqbench list models`, which names each model's weights)"),
])
def test_bad_results_directories_and_names_are_one_line(args: list[str], expected: str, fault_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    res = mqbench_in_process(*args, env={**fault_env, "MQBENCH_RESULTS": str(tmp_path / "unused")})
    assert_one_line_error(res, 2, expected)
    assert not (tmp_path / "unused").exists()


def test_store_check_reports_leftovers_and_repair_removes_only_old_ones(results_copy: Callable[[], Path],
                                                                        fault_env: dict[str, str]) -> None:
    results = results_copy()
    records_before = digests(results / "records")
    stale = results / "records" / ".20261201T000000-abc.json.x1y2.partial"
    fresh = results / "records" / ".20261202T000000-def.json.x3y4.partial"
    orphan = results / "attachments" / "20261201T000000-000000000000-00000000.layerwise.json"
    build = results / ".publish-abandoned"
    for path in (stale, fresh, orphan):
        path.write_text("{")
    build.mkdir()
    an_hour_ago = time.time() - 3600
    for path in (stale, orphan, build):
        os.utime(path, (an_hour_ago, an_hour_ago))
    res = mqbench_in_process("store", "check", "--results", str(results), env=fault_env)
    assert res.returncode == 1
    for path in (stale, orphan, build):
        assert f"leftover: {path}" in res.stdout
    assert str(fresh) not in res.stdout and "3 left (run with --repair" in res.stdout
    res = mqbench_in_process("store", "check", "--repair", "--results", str(results), env=fault_env)
    assert res.returncode == 0 and "3 leftover(s) removed" in res.stdout
    assert not stale.exists() and not orphan.exists() and not build.exists() and fresh.exists()
    assert digests(results / "records") == {**records_before, fresh.relative_to(results / "records").as_posix():
                                            digests(results / "records")[fresh.name]}
    (results / "records" / "junk.json").write_text("not json")
    res = mqbench_in_process("store", "check", "--repair", "--results", str(results), env=fault_env)
    assert res.returncode == 1 and "problem: " in res.stderr and "junk.json" in res.stderr
    assert (results / "records" / "junk.json").exists()  # a record-shaped problem is never deleted
