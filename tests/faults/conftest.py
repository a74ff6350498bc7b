"""Fixtures of the fault matrix: a plugin site with the fault plugins, their weights files, a baseline results
directory, and helpers that run the real CLI and check its answer."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.fake_plugins import Tiny
from tests.helpers import REPO, cli_env

SMALL = ("--limit", "64", "--no-latency", "--quiet")  # a cell of the fault model takes well under a second


def write_site(site: Path, plugins: dict[str, str]) -> Path:
    """An installed distribution declaring ``plugins`` (entry name -> module) in the ``mqbench`` group."""
    info = site / "faulttest-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulttest\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mqbench]\n" + "".join(f"{k} = {v}\n" for k, v in plugins.items()))
    return site


def write_weights(folder: Path) -> None:
    """The fault model's weights: finite, one NaN in the first conv, one BatchNorm with a negative running variance."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    finite = Tiny(10).state_dict()
    torch.save(finite, folder / "finite.pt")
    nan = {k: v.clone() for k, v in finite.items()}
    nan["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(nan, folder / "nan.pt")
    negative = {k: v.clone() for k, v in finite.items()}
    negative["features.1.running_var"][0] = -1.0
    torch.save(negative, folder / "negative_bn_var.pt")


@pytest.fixture(scope="session")
def fault_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    write_weights(root / "weights")
    write_site(root / "site", {"faulttest": "tests.faults.fault_plugins"})
    write_site(root / "site-colliding", {"faulttest": "tests.faults.fault_plugins",
                                         "collidingtest": "tests.faults.colliding_plugin"})
    return root


def env_for(root: Path, site: str = "site", **extra: str) -> dict[str, str]:
    return cli_env(root / "cache", PYTHONPATH=f"{root / site}{os.pathsep}{REPO}", MQBENCH_FAULT_DIR=str(root / "weights"),
                   **extra)


@pytest.fixture(scope="session")
def fault_env(fault_root: Path) -> dict[str, str]:
    return env_for(fault_root)


def run_cli(*args: str, env: dict[str, str], umask: int | None = None, max_file_bytes: int | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, optionally under a umask or a file-size limit (writes past it fail with EFBIG,
    as a full disk fails them with ENOSPC; Python ignores SIGXFSZ)."""

    def limits() -> None:
        if umask is not None:
            os.umask(umask)
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([sys.executable, "-m", "mqbench", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limits)


def assert_one_line_error(res: subprocess.CompletedProcess[str], code: int, expected: str) -> str:
    """Exit ``code``, no traceback, and exactly one error line (the last line of stderr) containing ``expected``."""
    assert res.returncode == code, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or line.startswith("interrupted")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr[-3000:]
    assert expected in errors[0], errors[0]
    return errors[0]


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (records, attachments, published files)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def baseline(fault_root: Path, fault_env: dict[str, str]) -> Path:
    """A results directory with three ok records of the finite fault model (one with a layer-wise attachment)."""
    results = fault_root / "baseline"
    res = run_cli("run", "--model", "fault_tiny:finite", "--method", "fp32", "--method", "minmax", "--scheme",
                  "w8a8-pt", "--scheme", "w8a8-pc", "--results", str(results), *SMALL, env=fault_env)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli("analyze", "--model", "fault_tiny:finite", "--method", "minmax", "--scheme", "w8a8-pt", "--images",
                  "16", "--limit", "64", "--quiet", "--results", str(results), env=fault_env)
    assert res.returncode == 0, res.stderr[-3000:]
    return results


@pytest.fixture
def results_copy(baseline: Path, tmp_path: Path) -> Callable[[], Path]:
    """A fresh copy of the baseline results (records and attachments only)."""

    def make() -> Path:
        dest = tmp_path / "results"
        shutil.copytree(baseline, dest)
        return dest

    return make
