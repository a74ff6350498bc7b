"""The Ray executor: a quick-suite sweep on a local Ray instance (2 CPUs) gives the records the in-process
executor gives; a killed worker is retried without a lost or duplicated record; a cell whose worker always dies
is stored as failed with the cause; the CLI runs and resumes through Ray; without Ray the CLI names the extra."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqbench import harness
from mqbench.plugins import BUILTIN_PLUGINS, Plugins
from mqbench.store import Store
from mqbench.suites import QUICK
from tests.fake_plugins import KILL_DIR_ENV
from tests.helpers import REPO, cli_env, mqbench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins(builtins=(*BUILTIN_PLUGINS, "tests.fake_plugins"), entry_points=False, disable=set())


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray instance with 2 CPUs whose workers can import ``tests.fake_plugins``; yields the folder
    the killing test methods use."""
    ray = pytest.importorskip("ray")
    kill_dir = tmp_path_factory.mktemp("kill")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", KILL_DIR_ENV)}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    os.environ[KILL_DIR_ENV] = str(kill_dir)  # the workers, started by ray.init, inherit both
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield kill_dir
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ray_executor(**kwargs: Any) -> Any:
    from mqbench.harness.ray_executor import RayExecutor, RayExecutorConfig

    return RayExecutor(RayExecutorConfig(**kwargs))


def _by_hash(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["config_hash"]: r for r in records}


def test_quick_sweep_through_ray_equals_in_process_and_resumes(local_ray: Path, plugins: Plugins, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    cells = harness.expand(plugins, QUICK)
    local = harness.run(cells, Store(tmp_path / "local"), harness.Workspace(plugins))
    ray_store = Store(tmp_path / "ray")
    put, shared = ray.put, []
    monkeypatch.setattr(ray, "put", lambda value: shared.append(type(value).__name__) or put(value))
    via_ray = harness.run(cells, ray_store, harness.Workspace(plugins), _ray_executor())
    # Each input put into the object store once for the 9 cells: 3 models' weights, the calibration and test splits.
    assert sorted(shared) == ["ResolvedWeights"] * 3 + ["Split"] * 2
    assert via_ray.to_run == len(cells) == 9 and not via_ray.failed
    mine, theirs = _by_hash(local.records), _by_hash(via_ray.records)
    assert set(mine) == set(theirs) and len(theirs) == 9
    for key, expected in mine.items():
        got = theirs[key]
        assert got["status"] == expected["status"] == "ok"
        assert got["metrics"] == expected["metrics"], got["config"]  # metric for metric
        assert got["weights"]["sha256"] == expected["weights"]["sha256"]
        assert got["data"] == expected["data"]  # the same images, by fingerprint
        assert got["executor"]["name"] == "ray" and got["executor"]["cpus_per_cell"] == 1
        assert expected["executor"] == {"name": "in-process"}
    stored = ray_store.load()
    assert not stored.problems and sorted(r["record_id"] for r in stored.records) == sorted(
        r["record_id"] for r in via_ray.records)
    again = harness.run(cells, ray_store, harness.Workspace(plugins), _ray_executor())
    assert again.to_run == 0 and again.already_stored == 9 and len(ray_store.load().records) == 9


def _kill_when_written(pid_file: Path, killed: list[int], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        if text:
            os.kill(int(text), signal.SIGKILL)
            killed.append(int(text))
            return
        time.sleep(0.05)


def test_a_worker_killed_mid_task_is_retried_without_losing_or_duplicating_records(
        local_ray: Path, plugins: Plugins, tmp_path: Path) -> None:
    cells = harness.expand(plugins, QUICK, models=["tiny_test_cnn"], quantizers=["killed_once+minmax", "minmax"],
                          schemes=["w8a8-pt"], eval_limit=200)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_written, args=(local_ray / "killed_once.pid", killed))
    killer.start()
    store = Store(tmp_path / "results")
    summary = harness.run(cells, store, harness.Workspace(plugins), _ray_executor(max_retries=2))
    killer.join()
    assert len(killed) == 1  # the first attempt was killed (SIGKILL) while its cell was running
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    records = store.load().records
    assert len(records) == 2 and {r["config"]["pipeline"] for r in records} == {"killed_once+minmax", "minmax"}
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    retried = next(r for r in summary.records if r["config"]["pipeline"] == "killed_once+minmax")
    assert retried["metrics"]["sim"]["accuracy"]["n"] == 200


def test_a_cell_whose_worker_always_dies_is_stored_as_failed_and_the_sweep_goes_on(
        local_ray: Path, plugins: Plugins, tmp_path: Path) -> None:
    cells = harness.expand(plugins, QUICK, models=["tiny_test_cnn"], quantizers=["always_killed+minmax", "minmax"],
                          schemes=["w8a8-pt"], eval_limit=200)
    store = Store(tmp_path / "results")
    summary = harness.run(cells, store, harness.Workspace(plugins), _ray_executor(max_retries=1))
    attempts = (local_ray / "always_killed.attempts").read_text().split()
    assert len(attempts) == 2 and len(set(attempts)) == 2  # tried twice, each time in a new worker process
    by = {r["config"]["pipeline"]: r for r in store.load().records}
    assert len(by) == 2 and by["minmax"]["status"] == "ok"
    failed = by["always_killed+minmax"]
    assert failed["status"] == "failed" and failed["error"]["attempts"] == 2
    assert "Worker" in failed["error"]["type"] or "worker" in failed["error"]["message"].lower(), failed["error"]
    assert failed["config_hash"] == harness.config_hash(harness.cell_config(cells[0], plugins))
    assert [r["config"]["pipeline"] for r in summary.failed] == ["always_killed+minmax"]
    again = harness.run(cells, store, harness.Workspace(plugins), _ray_executor(max_retries=0))
    assert again.to_run == 1  # resume retries the failed cell only


def test_a_cell_no_node_can_host_is_a_usage_error_not_a_hang(local_ray: Path, plugins: Plugins,
                                                              tmp_path: Path) -> None:
    from mqbench.errors import UsageError

    cells = harness.expand(plugins, QUICK, models=["tiny_test_cnn"], quantizers=["minmax"], schemes=["w8a8-pt"])
    for kwargs, message in (({"cpus_per_cell": 64}, "--cpus-per-cell 64: no node"),
                            ({"gpus_per_cell": 1}, "--gpus-per-cell 1: no node")):
        with pytest.raises(UsageError, match=message):
            harness.run(cells, Store(tmp_path / "results"), harness.Workspace(plugins), _ray_executor(**kwargs))
    assert not Store(tmp_path / "results").load().records


def test_cli_runs_and_resumes_a_sweep_on_its_own_local_ray_instance(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    results = tmp_path / "results"
    args = ("run", "--model", "quick_cnn", "--method", "minmax", "--scheme", "w8a8-pt", "--scheme", "w8a8-pc",
            "--limit", "200", "--quiet", "--executor", "ray", "--max-retries", "1", "--results", str(results))
    env = cli_env(Path(os.environ.get("MQBENCH_CACHE") or tmp_path / "cache"))
    first = mqbench(*args, env=env)
    assert first.returncode == 0, first.stderr
    records = Store(results).load().records
    assert len(records) == 2 and all(r["status"] == "ok" and r["executor"]["name"] == "ray" for r in records)
    second = mqbench(*args, env=env)
    assert second.returncode == 0 and "2 of 2 cells already stored" in second.stderr, second.stderr
    assert len(Store(results).load().records) == 2


def test_without_ray_the_cli_names_the_extra_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    res = mqbench("run", "--model", "quick_cnn", "--method", "minmax", "--executor", "ray",
                  "--results", str(tmp_path / "r"), env=cli_env(tmp_path / "cache", fake))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'mqbench[ray]'" in lines[0], res.stderr
    assert not (tmp_path / "r").exists()
