"""mqbench's test kit for plugin authors: a pytest plugin (loaded through the ``pytest11`` entry point) that runs
the real CLI in a temp project, and the conformance check every method, toolkit and runtime must pass.

In a plugin's tests::

    from mqbench.testing import check_conformance, conformance_quantizers, run_conformance

    def test_my_method_on_every_runtime(mqbench_project):
        records = run_conformance(mqbench_project, conformance_quantizers(methods=["my_method"]))
        for (quantizer, runtime), record in records.items():
            check_conformance(record)

:class:`Project` (the ``mqbench_project`` fixture) is a folder with its own weights cache and results
directory, and the conformance model (a tiny MobileNetV2, :mod:`mqbench.testing.models`) installed as a plugin
through an entry point, exactly as a user's plugin would be; ``project.run(...)`` runs ``python -m mqbench`` there.

:func:`run_conformance` runs every given quantizer on every registered runtime (scheme ``w8a8-pc``, or
``w8a8-pc-pow2`` for a method that needs power-of-two scales; 64 evaluation images, no latency) through the CLI and
returns the records by (quantizer, runtime).
:func:`check_conformance` asserts what every record must satisfy: the cell ran (``ok``) or says why not
(``skipped`` with a reason), never ``failed``; the record validates against the record schema; every config in
it round-trips through JSON and through its dataclass; an ``ok`` record has the accuracy of every image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

SCHEMES = ("w8a8-pc", "w8a8-pc-pow2")  # each quantizer runs on the first it serves
EVAL_IMAGES = 64
MODEL = "conformance_mobilenet_v2"
# Methods made for one architecture run on its conformance model instead (qf_sepconv: MobileNetV1's blocks).
METHOD_MODELS: dict[str, str] = {"qf_sepconv": "conformance_mobilenet_v1"}
# Parameters that make each built-in method's conformance cell take about a second (the defaults are what the
# published figures use); a third-party method is run with its defaults unless the caller passes its own.
FAST_PARAMS: dict[str, str] = {
    "adaround": "iterations=10,images=32", "bias_correction": "epochs=1,max_images=32", "cle": "max_images=16",
    "lsq": "iterations=5,images=32", "tqt": "iterations=5,images=32", "msqe": "gradient_images=32,refinements=2",
    "lsq_qat": "train_limit=64,batch_size=32", "msqe_qat": "train_limit=64,batch_size=32",
    "tqt_qat": "train_limit=64,batch_size=32", "qf_sepconv": "epochs=1,train_limit=64,batch_size=32",
}


class Project:
    """A temp mqbench project: weights cache, results directory, site folder of installed test plugins."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.site = self.root / "site"
        self.results = self.root / "results"
        self.install_plugin("mqbench-conformance-model", "conformance", "mqbench.testing.models")

    def install_plugin(self, dist: str, entry_name: str, module: str, source: str | None = None) -> None:
        """Install ``module`` (its ``source`` written into the site folder, or an importable module) as the
        ``mqbench`` entry point ``entry_name`` of distribution ``dist``, as pip would."""
        self.site.mkdir(parents=True, exist_ok=True)
        if source is not None:
            (self.site / f"{module}.py").write_text(source)
        info = self.site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[mqbench]\n{entry_name} = {module}\n")

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("MQBENCH_DISABLE_PLUGINS",)}
        env.update(MQBENCH_CACHE=str(self.root / "cache"), MQBENCH_RESULTS=str(self.results))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.site), env.get("PYTHONPATH", "")) if p)
        return env

    def run(self, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        """``python -m mqbench *args`` in the project (results in ``self.results``)."""
        return subprocess.run([sys.executable, "-m", "mqbench", *args], env=self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)

    def records(self) -> list[dict[str, Any]]:
        from mqbench.store import Store

        loaded = Store(self.results).load()
        assert not loaded.problems, f"unreadable records: {loaded.problems}"
        return loaded.records


def conformance_pipeline(method: Any, params: str = "") -> str:
    """The shortest valid pipeline that runs ``method`` (a :class:`mqbench.methods.Method`)."""
    step = f"{method.name}({params})" if params else method.name
    if not method.quantizes:
        return step
    if method.stage == "transform":
        return f"{step}+minmax"
    if method.stage == "refine":
        return f"minmax+{step}"
    missing = {"weights", "activations"} - set(method.calibrates(method.make_config(_params(params))))
    return "+".join([step, *(f"minmax(targets={t})" for t in sorted(missing))])


def _params(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def conformance_quantizers(methods: Sequence[str] | None = None, toolkits: Sequence[str] | None = None,
                           params: dict[str, str] | None = None, plugins: Any = None) -> list[str]:
    """A pipeline per method (every registered one by default) and every recipe of each toolkit, as the canonical
    text records name them; ``plugins``: the plugin set to read (default: this process's)."""
    from mqbench.harness.quantizer import parse_quantizer
    from mqbench.plugins import get_plugins

    plugins, params = plugins or get_plugins(), {**FAST_PARAMS, **(params or {})}
    chosen = [plugins.methods.get(m) for m in methods] if methods is not None else list(plugins.methods)
    kits = [plugins.toolkits.get(t) for t in toolkits] if toolkits is not None else list(plugins.toolkits)
    texts = [*(conformance_pipeline(m, params.get(m.name, "")) for m in chosen),
             *(f"{kit.name}:{recipe}" for kit in kits for recipe in kit.recipes)]
    return [parse_quantizer(text, plugins).name for text in texts]  # canonical: as records name them


def conformance_runtimes() -> list[str]:
    from mqbench.plugins import get_plugins

    return get_plugins().runtimes.names()


def conformance_scheme(quantizer: str, plugins: Any = None) -> str:
    """The first of :data:`SCHEMES` the quantizer can serve (a QAT method that trains power-of-two scales needs a
    ``-pow2`` scheme); a UsageError when it serves none of them."""
    from mqbench.errors import UsageError
    from mqbench.harness.quantizer import parse_quantizer
    from mqbench.plugins import get_plugins
    from mqbench.schemes import parse_scheme

    parsed = parse_quantizer(quantizer, plugins or get_plugins())
    for scheme in SCHEMES:
        try:
            parsed.check_scheme(parse_scheme(scheme))
        except UsageError:
            continue
        return scheme
    raise UsageError(f"{quantizer} serves none of the conformance schemes {', '.join(SCHEMES)}")


def run_conformance(project: Project, quantizers: Sequence[str], runtimes: Sequence[str] | None = None,
                    plugins: Any = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Run every quantizer on every runtime, one CLI call per conformance scheme; the newest record of each
    (quantizer, runtime)."""
    runtimes = list(runtimes) if runtimes is not None else conformance_runtimes()
    groups: dict[tuple[str, str], list[str]] = {}
    for quantizer in quantizers:
        model = next((m for name, m in METHOD_MODELS.items() if quantizer.startswith(name)), MODEL)
        groups.setdefault((conformance_scheme(quantizer, plugins), model), []).append(quantizer)
    for (scheme, model), group in groups.items():
        args = ["run", "--suite", "quick", "--model", model, "--scheme", scheme, "--limit", str(EVAL_IMAGES),
                "--no-latency", "--quiet", "--train-budget", "60",
                *(a for q in group for a in ("--method", q)), *(a for r in runtimes for a in ("--backend", r))]
        done = project.run(*args)
        if done.returncode not in (0, 1):  # 1: some cell failed, which check_conformance reports per cell
            raise AssertionError(f"mqbench run exited {done.returncode}: {done.stderr[-3000:]}")
    return {(r["config"]["pipeline"], r["config"]["backend"]): r for r in project.records()}


def check_conformance(record: dict[str, Any], plugins: Any = None) -> None:
    """Assert what every record of a conformant method, toolkit and runtime satisfies (module docstring);
    ``plugins``: the plugin set that ran it (default: this process's)."""
    from mqbench.record_schema import problem

    c = record["config"]
    where = f"{c['pipeline']} on {c['backend']}"
    assert record["status"] != "failed", f"{where} failed: {record.get('error')}"
    assert problem(record) is None, f"{where}: invalid record: {problem(record)}"
    if record["status"] == "skipped":
        assert record["skip_reason"].strip(), f"{where} was skipped without a reason"
        return
    assert json.loads(json.dumps(c)) == c, f"{where}: the config does not round-trip through JSON"
    for config in _configs(c, plugins):
        assert config[0].from_dict(config[1]).to_dict() == config[1], f"{where}: {config[1]} does not round-trip"
    for which, metrics in record["metrics"].items():
        assert metrics["accuracy"]["n"] == record["data"]["eval"]["size"], f"{where}: {which} missed images"


def _configs(config: dict[str, Any], plugins: Any = None) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(config class, stored dict) of each step and of the toolkit recipe in a record's config."""
    from mqbench.plugins import get_plugins

    plugins = plugins or get_plugins()
    for step in config.get("steps", []):
        yield plugins.methods.get(step["method"]).config_type, step["config"]
    if "quantizer" in config:
        q = config["quantizer"]
        yield type(plugins.toolkits.get(q["toolkit"]).recipe(q["recipe"]).config), q["config"]


@pytest.fixture
def mqbench_project(tmp_path: Path) -> Project:
    """A fresh temp mqbench project (see :class:`Project`)."""
    return Project(tmp_path / "mqbench-project")


__all__ = [
    "EVAL_IMAGES",
    "FAST_PARAMS",
    "METHOD_MODELS",
    "MODEL",
    "SCHEMES",
    "Project",
    "check_conformance",
    "conformance_pipeline",
    "conformance_quantizers",
    "conformance_runtimes",
    "conformance_scheme",
    "mqbench_project",
    "run_conformance",
]
