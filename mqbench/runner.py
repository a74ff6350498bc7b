"""The runner: expands a suite into cells, runs each cell's flow, writes one record per cell.

The flow of one cell (``run_cell``)::

    model  = models[name].build() + weights             float, eval mode
    calib, evalset = datasets[name].load_split(...)      decoded once per process, cached
    float' = transform steps (model)
    qsim   = backend.prepare(float', scheme)             quantizers where the backend quantizes
    calibrate steps (qsim, calib); refine steps (qsim, float', calib)
    sim    = evaluate(qsim, evalset)
    deployed = backend.convert(qsim); dep = evaluate(deployed, evalset)   (real backends only)
    record(cell, metrics, provenance, timings)

Cells run through an :class:`Executor` (``InProcessExecutor`` now); the driver writes each record
as soon as its cell finishes, so a killed run loses at most the cell in flight.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import torch
from torch import nn

from mqbench import provenance
from mqbench.data import Split
from mqbench.errors import UsageError
from mqbench.methods import STAGE_ORDER, Method, StepContext
from mqbench.metrics import Evaluation
from mqbench.models.weights import load_into, resolve_weights
from mqbench.plugins import Plugins
from mqbench.progress import SILENT, Reporter
from mqbench.schemes import FP32, QuantScheme, parse_scheme
from mqbench.store import SCHEMA, SCHEMA_VERSION, Store, new_record_id
from mqbench.suites import Suite


@dataclass(frozen=True)
class Cell:
    """One (model, weights, dataset, pipeline, backend, scheme, seed) with its data sizes."""

    model: str
    weights: str
    dataset: str
    pipeline: str
    backend: str
    scheme: str
    seed: int = 0
    calib_size: int = 256
    eval_limit: int | None = None
    suite: str | None = None


def parse_pipeline(text: str, plugins: Plugins) -> list[Method]:
    """The methods of a ``+``-joined pipeline, ordered by stage; impossible pipelines are UsageErrors."""
    names = [n.strip() for n in text.split("+")]
    if not text.strip() or any(not n for n in names):
        raise UsageError(f"malformed pipeline {text!r}: method names joined by '+', e.g. 'minmax'")
    if len(set(names)) != len(names):
        raise UsageError(f"pipeline {text!r} names a method twice")
    steps = [plugins.methods.get(n) for n in names]
    if any(not s.quantizes for s in steps) and len(steps) > 1:
        plain = [s.name for s in steps if not s.quantizes]
        raise UsageError(f"pipeline {text!r}: {plain[0]} does not quantize and cannot be combined with other steps")
    if all(s.quantizes for s in steps):
        calibrators = [s.name for s in steps if s.stage == "calibrate"]
        if len(calibrators) != 1:
            what = "no calibrate step" if not calibrators else f"{len(calibrators)} calibrate steps ({', '.join(calibrators)})"
            raise UsageError(f"pipeline {text!r} has {what}; a quantizing pipeline needs exactly one "
                             "(e.g. 'minmax')")
    return sorted(steps, key=lambda s: STAGE_ORDER[s.stage])


def pipeline_name(steps: Sequence[Method]) -> str:
    return "+".join(s.name for s in steps)


def cell_config(cell: Cell, plugins: Plugins) -> dict[str, Any]:
    """The full configuration of a cell (what its hash keys): names, scheme and step configs."""
    steps = parse_pipeline(cell.pipeline, plugins)
    return {
        "model": cell.model, "weights": cell.weights, "dataset": cell.dataset, "pipeline": cell.pipeline,
        "steps": [{"method": s.name, "stage": s.stage, "config": s.default_config().to_dict()} for s in steps],
        "backend": cell.backend, "scheme": cell.scheme, "seed": cell.seed, "calib_size": cell.calib_size,
        "eval_limit": cell.eval_limit,
    }


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def expand(plugins: Plugins, suite: Suite, models: Sequence[str] = (), pipelines: Sequence[str] = (),
           backends: Sequence[str] = (), schemes: Sequence[str] = (), eval_limit: int | None = None) -> list[Cell]:
    """The cells of ``suite``; a non-empty ``models``/``pipelines``/... replaces that dimension.

    Every name is checked first: an unknown one raises UnknownNameError (CLI exit 2) before any work.
    """
    dataset = plugins.datasets.get(suite.dataset)
    dataset.check()
    model_entries = []
    for entry in models or suite.models:
        name, _, weights = entry.partition(":")
        spec = plugins.models.get(name)
        weights = weights or spec.default_weights
        wspec = spec.get_weights(weights)
        wdata = wspec.dataset
        if wdata != dataset.name:
            raise UsageError(f"model {name!r} weights {weights!r} are for dataset {wdata!r}, but suite "
                             f"{suite.name!r} evaluates on {dataset.name!r}")
        model_entries.append((name, weights))
    pipes = [pipeline_name(parse_pipeline(p, plugins)) for p in (pipelines or suite.pipelines)]
    backs = [plugins.backends.get(b).name for b in (backends or suite.backends)]
    scheme_objs = [parse_scheme(s) for s in (schemes or suite.schemes)]
    limit = eval_limit if eval_limit is not None else suite.eval_limit
    cells: list[Cell] = []
    for (model, weights), pipe, backend, seed in itertools.product(model_entries, pipes, backs, suite.seeds):
        quantizes = all(plugins.methods.get(n).quantizes for n in pipe.split("+"))
        for scheme in (scheme_objs if quantizes else [FP32]):
            if quantizes and scheme.is_float:
                continue
            cells.append(Cell(model, weights, dataset.name, pipe, backend, scheme.name, seed, suite.calib_size,
                              limit, suite.name))
    return list(dict.fromkeys(cells))


class Workspace:
    """Per-process caches shared by the cells of a run: decoded splits and float weights."""

    def __init__(self, plugins: Plugins, reporter: Reporter = SILENT, batch_size: int = 256) -> None:
        self.plugins = plugins
        self.reporter = reporter
        self.batch_size = batch_size
        self._splits: dict[tuple[str, str, int | None, str], Split] = {}
        self._weights: dict[tuple[str, str], Any] = {}

    def split(self, dataset: str, split: str, limit: int | None = None, preprocess: str = "native") -> Split:
        """A decoded split (decoded once per process; image datasets also cache it on disk)."""
        key = (dataset, split, limit, preprocess)
        if key not in self._splits:
            self._splits[key] = self.plugins.datasets.get(dataset).load_split(split, limit, preprocess, self.reporter)
        return self._splits[key]

    def float_model(self, model: str, weights: str) -> tuple[nn.Module, dict[str, Any]]:
        """A fresh float model (eval mode) with ``weights`` loaded, and facts about the weights."""
        spec = self.plugins.models.get(model)
        key = (model, weights)
        wspec = spec.get_weights(weights)
        if key not in self._weights:
            self._weights[key] = resolve_weights(spec, wspec, self.plugins.datasets.get,
                                                 lambda d, s: self.split(d, s, None, wspec.preprocess), self.reporter)
        resolved = self._weights[key]
        net = spec.build(self.plugins.datasets.get(wspec.dataset).num_classes, **dict(wspec.build_kwargs))
        load_into(net, copy.deepcopy(resolved.state_dict), f"weights {model}:{weights} ({resolved.source})")
        return net.eval(), {"name": weights, "sha256": resolved.sha256, "source": resolved.source,
                            "float_test_top1_at_training": resolved.meta.get("test_top1")}


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int,
             reporter: Reporter = SILENT, label: str = "evaluating") -> Evaluation:
    logits = []
    with torch.inference_mode():
        for inputs, _ in reporter.track(split.batches(batch_size), label, total=-(-len(split) // batch_size)):
            logits.append(model(inputs).float())
    return Evaluation(torch.cat(logits), split.labels)


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - start, 4)


def _plugin_ref(plugins: Plugins, kind: str, name: str) -> dict[str, Any]:
    info = plugins.plugin_of(kind, name)
    return {"name": name, "plugin": info.name, "distribution": info.distribution, "plugin_version": info.version}


def run_cell(cell: Cell, ws: Workspace) -> dict[str, Any]:
    """Run one cell and return its record (status ``ok``, ``skipped`` or ``failed``); never raises
    for a failure inside the cell (KeyboardInterrupt and SystemExit propagate)."""
    plugins = ws.plugins
    config = cell_config(cell, plugins)
    timer = _Timer()
    record: dict[str, Any] = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "record_id": new_record_id(),
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
        "config_hash": config_hash(config), "config": config, "suite": cell.suite, "status": "ok",
        "provenance": provenance.collect(), "timings_s": timer.timings,
    }
    try:
        steps = parse_pipeline(cell.pipeline, plugins)
        backend = plugins.backends.get(cell.backend)
        record["plugins"] = {
            "model": _plugin_ref(plugins, "model", cell.model),
            "dataset": _plugin_ref(plugins, "dataset", cell.dataset),
            "methods": [{**_plugin_ref(plugins, "method", s.name), "version": s.version} for s in steps],
            "backend": {**_plugin_ref(plugins, "backend", cell.backend), "version": backend.version,
                        "info": backend.info()},
            "metrics": [_plugin_ref(plugins, "metric", m.name) for m in plugins.metrics],
        }
        scheme: QuantScheme = parse_scheme(cell.scheme)
        reason = backend.check_scheme(scheme) if not scheme.is_float else None
        if reason:
            record["status"], record["skip_reason"] = "skipped", f"backend {backend.name} cannot run {scheme.name}: {reason}"
            return record
        torch.manual_seed(cell.seed)
        ctx = StepContext(seed=cell.seed, batch_size=ws.batch_size, reporter=ws.reporter)
        preprocess = plugins.models.get(cell.model).get_weights(cell.weights).preprocess
        with timer("load_data"):
            calib = ws.split(cell.dataset, "calib", cell.calib_size, preprocess)
            evalset = ws.split(cell.dataset, "test", cell.eval_limit, preprocess)
        record["data"] = {"dataset": cell.dataset, "preprocess": preprocess,
                          "calib": {"split": "calib", "size": len(calib), "fingerprint": calib.fingerprint()},
                          "eval": {"split": "test", "size": len(evalset), "fingerprint": evalset.fingerprint()}}
        with timer("load_model"):
            model, weights_info = ws.float_model(cell.model, cell.weights)
        record["weights"] = weights_info
        for step in steps:
            if step.stage == "transform":
                with timer(f"transform:{step.name}"):
                    model = step.transform(model, step.default_config(), ctx)
        evaluations: dict[str, Evaluation] = {}
        if scheme.is_float:
            with timer("deploy"):
                deployed = backend.deploy_float(model)
            with timer("evaluate"):
                evaluations["sim" if backend.simulation_only else "deployed"] = evaluate(
                    deployed, evalset, ws.batch_size, ws.reporter)
        else:
            with timer("prepare"):
                qsim = backend.prepare(model, scheme)
            for step in steps:
                if step.stage == "calibrate":
                    with timer(f"calibrate:{step.name}"):
                        step.calibrate(qsim, calib, step.default_config(), ctx)
            for step in steps:
                if step.stage == "refine":
                    with timer(f"refine:{step.name}"):
                        step.refine(qsim, model, calib, step.default_config(), ctx)
            with timer("evaluate_sim"):
                evaluations["sim"] = evaluate(qsim.eval(), evalset, ws.batch_size, ws.reporter, "evaluating (sim)")
            if not backend.simulation_only:
                with timer("convert"):
                    deployed = backend.convert(qsim)
                with timer("evaluate_deployed"):
                    evaluations["deployed"] = evaluate(deployed, evalset, ws.batch_size, ws.reporter,
                                                       "evaluating (deployed)")
            record["qparams_summary"] = {"weight_quantizers": len(qsim.weight_quantizers),
                                         "activation_quantizers": len(qsim.act_quantizers)}
        if ctx.notes:
            record["method_notes"] = ctx.notes
        with timer("metrics"):
            record["metrics"] = {
                which: {metric.name: metric.compute(ev) for metric in plugins.metrics}
                for which, ev in evaluations.items()}
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a cell's failure is stored, never fatal to the run
        record["status"] = "failed"
        record["error"] = {"type": type(exc).__name__, "message": str(exc),
                           "traceback": traceback.format_exc(limit=8)[-4000:]}
    return record


class Executor(Protocol):
    """Runs cells and yields their records as they finish (in any order)."""

    def map(self, fn: Callable[[Cell], dict[str, Any]], cells: Sequence[Cell]) -> Iterator[dict[str, Any]]: ...


class InProcessExecutor:
    """Runs cells one after another in this process."""

    def map(self, fn: Callable[[Cell], dict[str, Any]], cells: Sequence[Cell]) -> Iterator[dict[str, Any]]:
        for cell in cells:
            yield fn(cell)


@dataclass
class RunSummary:
    to_run: int = 0
    already_stored: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "failed"]


def run(cells: Sequence[Cell], store: Store, ws: Workspace, executor: Executor | None = None,
        force: bool = False, on_record: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
    """Run the cells not yet stored (all with ``force``); append each record as it finishes."""
    store.ensure_writable()
    done = set() if force else store.completed_hashes()
    todo = [c for c in cells if config_hash(cell_config(c, ws.plugins)) not in done]
    summary = RunSummary(to_run=len(todo), already_stored=len(cells) - len(todo))
    executor = executor or InProcessExecutor()
    for record in ws.reporter.track(executor.map(lambda c: run_cell(c, ws), todo), "cells", total=len(todo)):
        store.append(record)
        summary.records.append(record)
        if on_record is not None:
            on_record(record)
    return summary


__all__ = ["Cell", "Executor", "InProcessExecutor", "RunSummary", "Workspace", "cell_config",
           "config_hash", "evaluate", "expand", "parse_pipeline", "run", "run_cell"]
