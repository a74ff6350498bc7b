"""The template plugin, registered through its entry point, is listed and runs in a cell."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_env, mqbench

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The installed template (README install) or, without it, its entry point registered by hand; the test run's
    cache when it has one (CI sets MQBENCH_CACHE), so the template's tiny CNN is trained once for the run."""
    cache = Path(os.environ.get("MQBENCH_CACHE") or tmp_path / "cache")
    try:
        metadata.distribution("mqbench-plugin-template")
        return cli_env(cache)
    except metadata.PackageNotFoundError:
        site = tmp_path / "site"
        info = site / "mqbench_plugin_template-0.1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mqbench-plugin-template\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text("[mqbench]\ntemplate = mqbench_template\n")
        src = REPO / "plugins" / "template" / "src"
        return cli_env(cache, PYTHONPATH=f"{site}{os.pathsep}{src}")


def test_template_in_plugins_list_and_run(env: dict[str, str], tmp_path: Path) -> None:
    infos = {p["name"]: p for p in json.loads(mqbench("plugins", "--json", env=env).stdout)}
    t = infos["template"]
    assert t["status"] == "loaded" and t["distribution"] == "mqbench-plugin-template"
    assert t["hooks"] == ["mqbench_register_methods", "mqbench_register_models", "mqbench_register_runtimes",
                          "mqbench_register_toolkits"]
    models = {m["name"]: m for m in json.loads(mqbench("list", "models", "--json", env=env).stdout)}
    assert models["template_tinycnn"]["plugin"] == "template"
    res = mqbench("run", "--model", "template_tinycnn", "--method", "template_meanstd", "--scheme", "w8a8-pc",
                  "--limit", "200", "--results", str(tmp_path / "r"), "--quiet", env=env)
    assert res.returncode == 0, res.stderr
    rec = json.loads(next((tmp_path / "r" / "records").glob("*.json")).read_text())
    assert rec["status"] == "ok" and rec["plugins"]["methods"][0]["plugin"] == "template"
    assert rec["config"]["steps"][0]["config"] == {"version": 1, "k": 6.0}
