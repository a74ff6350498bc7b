"""Tests of the template plugin, run as a plugin author would: the real CLI in a temp project, and mqbench's
conformance check (``mqbench.testing``, a pytest plugin installed with mqbench: its ``mqbench_project`` fixture
is a temp project) of the plugin's method, toolkit and runtime against every registered runtime and quantizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mqbench_template import MeanStdObserver

from mqbench.testing import Project, check_conformance, conformance_quantizers, run_conformance


def mqbench(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mqbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    # The cache of the test run when it has one (CI sets MQBENCH_CACHE): the tiny CNN is then trained once for all
    # tests that use it (its weights are keyed by their training config), not once per test.
    cache = os.environ.get("MQBENCH_CACHE") or str(tmp_path / "cache")
    env = {**os.environ, "MQBENCH_CACHE": cache, "MQBENCH_RESULTS": str(tmp_path / "results")}
    env.pop("MQBENCH_DISABLE_PLUGINS", None)
    return tmp_path, env


def test_meanstd_observer_clips_to_k_std() -> None:
    obs = MeanStdObserver(k=1.0)
    x = torch.tensor([-1.0, 1.0] * 50 + [100.0])
    obs.observe(x[:50])
    obs.observe(x[50:])  # statistics accumulate over batches
    lo, hi = obs.compute_range()
    mean, std = float(x.double().mean()), float(x.double().std(unbiased=False))
    assert mean - std < -1.0
    assert float(lo) == -1.0  # mean - k std lies below the data: clipped to the observed minimum
    assert float(hi) == pytest.approx(mean + std, rel=1e-6)
    assert float(hi) < 100.0  # the outlier is clipped


def test_plugin_is_listed(project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    res = mqbench("plugins", "--json", cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr
    info = {p["name"]: p for p in json.loads(res.stdout)}["template"]
    assert info["status"] == "loaded" and info["source"] == "entry point"
    assert info["registered"] == {"model": ["template_tinycnn"], "method": ["template_meanstd"],
                                  "runtime": ["template-bf16"], "toolkit": ["template"]}
    models = json.loads(mqbench("list", "models", "--json", cwd=cwd, env=env).stdout)
    assert "template_tinycnn" in {m["name"] for m in models}


def test_plugin_runs_in_a_cell(project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    res = mqbench("run", "--model", "template_tinycnn", "--method", "template_meanstd", "--method", "fp32",
                  "--scheme", "w8a8-pt", "--limit", "500", "--quiet", cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr
    board = json.loads(mqbench("leaderboard", "--format", "json", cwd=cwd, env=env).stdout)
    rows = {r["pipeline"]: r for r in board["rows"]}
    assert rows["template_meanstd"]["status"] == "ok"
    assert rows["template_meanstd"]["n"] == 500
    # The 5-epoch tiny CNN (measured 0.57 on the 2000 test images) is far above chance (0.10), and
    # 8-bit quantization keeps it within 5 points.
    assert rows["fp32"]["top1"] > 0.4
    assert abs(rows["template_meanstd"]["delta_top1"]) < 0.05


def test_the_method_toolkit_and_runtime_conform(mqbench_project: Project) -> None:
    mine = conformance_quantizers(methods=["template_meanstd", "fp32"], toolkits=["template"])
    records = run_conformance(mqbench_project, mine)  # on every registered runtime, template-bf16 included
    for record in records.values():
        check_conformance(record)
    assert records["template:meanstd", "ort-qdq"]["status"] == "ok"  # the toolkit's QuantSim runs on ONNX Runtime
    assert records["template_meanstd", "template-bf16"]["skip_reason"].endswith("not quantsim")
    bf16 = records["fp32", "template-bf16"]
    assert bf16["status"] == "ok" and bf16["plugins"]["backend"]["info"]["precision"] == "bf16"
