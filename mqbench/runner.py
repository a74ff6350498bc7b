"""The runner: expands a suite into cells, runs each cell's flow, writes one record per cell.

The flow of one cell (``run_cell``)::

    model  = models[name].build() + weights             float, eval mode
    calib, evalset = datasets[name].load_split(...)      decoded once per process, cached
    float' = transform steps (model)                    a training step (qf_sepconv) also gets the train split
                                                         and the cell's budget; kept for the sweep's other cells
    qsim   = backend.prepare(float', scheme)             quantizers where the backend quantizes
    calibrate steps (qsim, calib); refine steps (qsim, float', calib)
    sim    = evaluate(qsim, evalset)
    exact  = evaluate(backend.integer_simulation(qsim), evalset)          (where the runtime's arithmetic is modelled)
    deployed = backend.convert(qsim); dep = evaluate(deployed, evalset)   (real backends only)
    record(cell, metrics, provenance, timings)

Cells run through an :class:`Executor` (``InProcessExecutor``, or ``mqbench.ray_executor.RayExecutor``
over a Ray cluster); the driver writes each record as soon as its cell finishes, so a killed run loses at
most the cells in flight.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
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
from mqbench.backends import Deployed
from mqbench.data import Split
from mqbench.errors import ResultsDirError, UsageError
from mqbench.methods import STAGE_ORDER, Method, MethodConfig, StepContext
from mqbench.metrics import Evaluation
from mqbench.metrics.accuracy import agreement
from mqbench.metrics.latency import LatencySettings, measure_cell
from mqbench.metrics.layerwise import analyze
from mqbench.models.weights import ResolvedWeights, load_into, resolve_weights
from mqbench.plugins import Plugins
from mqbench.progress import SILENT, Reporter
from mqbench.quant.integer_sim import UnsupportedOp
from mqbench.schemes import FP32, QuantScheme, parse_scheme
from mqbench.store import ATTACHMENTS_KEY, SCHEMA, SCHEMA_VERSION, InvalidRecordError, Store, new_record_id
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
    # Layer-wise analysis on the first N evaluation images (None: none). A measurement added to the cell, not
    # part of its config: a stored record without it is rerun (adding a newer record) when it is asked for.
    layerwise_images: int | None = None
    # Wall-clock budget (seconds) of each training step of the pipeline (None: none). Set only on cells whose
    # pipeline has a step that ``needs_training``; part of the cell's config when set.
    train_budget_s: float | None = None


@dataclass(frozen=True)
class Step:
    """One pipeline step: a method and its (possibly overridden) config."""

    method: Method
    config: MethodConfig

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def stage(self) -> str:
        return self.method.stage

    @property
    def text(self) -> str:
        """Canonical text: the name, then parameters that differ from the defaults, sorted."""
        default = self.method.default_config().to_dict()
        changed = {k: v for k, v in self.config.to_dict().items() if default.get(k) != v}
        if not changed:
            return self.name
        return f"{self.name}({','.join(f'{k}={_format_value(v)}' for k, v in sorted(changed.items()))})"


_STEP_RE = re.compile(r"^([A-Za-z_][\w.-]*)(?:\((.*)\))?$")


def _format_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _split_steps(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "+" and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


PIPELINE_HELP = ("method names joined by '+', each optionally with parameters: e.g. 'minmax', "
                 "'cle+mse+bias_correction', 'percentile(percentile=99.9)', 'msqe+mse(targets=activations)'")


def parse_pipeline(text: str, plugins: Plugins) -> list[Step]:
    """The steps of a ``+``-joined pipeline, ordered by stage; impossible pipelines are UsageErrors.

    Checked here (independent of the scheme): syntax, unknown methods and parameters, a method named
    twice, ``fp32`` combined with other steps, a refine step without a calibrate step, and two
    calibrate steps for the same tensors. :func:`check_pipeline` adds the scheme-dependent checks.
    """
    parts = _split_steps(text)
    if not text.strip() or any(not p for p in parts):
        raise UsageError(f"malformed pipeline {text!r}: {PIPELINE_HELP}")
    steps: list[Step] = []
    for part in parts:
        m = _STEP_RE.match(part)
        if not m:
            raise UsageError(f"malformed pipeline step {part!r} in {text!r}: {PIPELINE_HELP}")
        method = plugins.methods.get(m.group(1))
        overrides: dict[str, Any] = {}
        for item in filter(None, (x.strip() for x in (m.group(2) or "").split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"malformed parameter {item!r} of step {part!r}: write key=value")
            overrides[key.strip()] = _parse_value(value.strip())
        try:
            config = method.make_config(overrides)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"pipeline {text!r}, step {part!r}: {exc}") from None
        steps.append(Step(method, config))
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise UsageError(f"pipeline {text!r} names a method twice")
    plain = [s.name for s in steps if not s.method.quantizes]
    if plain and (len(plain) > 1 or any(s.stage != "transform" for s in steps)):
        raise UsageError(f"pipeline {text!r}: {plain[0]} does not quantize and can only be combined with transform "
                         "steps (e.g. 'qf_sepconv+fp32': the float reference of a transformed model)")
    if all(s.method.quantizes for s in steps):
        calibrators = [s for s in steps if s.stage == "calibrate"]
        refiners = [s.name for s in steps if s.stage == "refine"]
        if not calibrators:
            what = f"refine step {refiners[0]!r} without a calibrate step" if refiners else "no calibrate step"
            raise UsageError(f"pipeline {text!r} has {what}; a quantizing pipeline needs a calibrate step that sets "
                             f"the ranges first (e.g. 'minmax{'+' + refiners[0] if refiners else ''}')")
        seen: dict[str, str] = {}
        for s in calibrators:
            for tensor in sorted(s.method.calibrates(s.config)):
                if tensor in seen:
                    raise UsageError(f"pipeline {text!r} has two calibrate steps for the {tensor} ({seen[tensor]} and "
                                     f"{s.name}); keep one, or restrict each with targets=weights / "
                                     "targets=activations")
                seen[tensor] = s.name
        if "weights" not in seen:
            raise UsageError(f"pipeline {text!r}: no calibrate step sets the weight ranges (add e.g. "
                             "'minmax(targets=weights)')")
    return sorted(steps, key=_step_order)


def _step_order(step: Step) -> tuple[int, int, str]:
    """Steps run stage by stage; within the calibrate stage, the steps that set weight ranges first, then by name,
    so the same calibrate steps written in another order are the same cell. Transform and refine steps keep the
    order they were written in (CLE before or after another transform is a different model)."""
    if step.stage != "calibrate":
        return STAGE_ORDER[step.stage], 0, ""
    return STAGE_ORDER[step.stage], 0 if "weights" in step.method.calibrates(step.config) else 1, step.name


def check_pipeline(steps: Sequence[Step], scheme: QuantScheme, text: str) -> None:
    """Scheme-dependent checks: every tensor the scheme quantizes is calibrated, and every step can
    serve the scheme. UsageError naming the conflict otherwise."""
    if scheme.is_float or not all(s.method.quantizes for s in steps):
        return
    covered = set().union(*(s.method.calibrates(s.config) for s in steps))
    if scheme.act_bits is not None and "activations" not in covered:
        raise UsageError(f"pipeline {text!r} does not calibrate activations, which scheme {scheme.name} quantizes; "
                         "add an activation calibrator (e.g. '+minmax(targets=activations)') or use a weights-only "
                         f"scheme such as w{scheme.weight_bits}")
    for s in steps:
        reason = s.method.check_scheme(scheme, s.config)
        if reason:
            raise UsageError(f"pipeline {text!r}: {s.name} cannot serve scheme {scheme.name}: {reason}")


def pipeline_name(steps: Sequence[Step]) -> str:
    return "+".join(s.text for s in steps)


def cell_config(cell: Cell, plugins: Plugins) -> dict[str, Any]:
    """The full configuration of a cell (what its hash keys): names, scheme and step configs."""
    steps = parse_pipeline(cell.pipeline, plugins)
    return {
        "model": cell.model, "weights": cell.weights, "dataset": cell.dataset, "pipeline": cell.pipeline,
        "steps": [{"method": s.name, "stage": s.stage, "config": s.config.to_dict()} for s in steps],
        "backend": cell.backend, "scheme": cell.scheme, "seed": cell.seed, "calib_size": cell.calib_size,
        "eval_limit": cell.eval_limit,
        **({"train_budget_s": cell.train_budget_s} if cell.train_budget_s is not None else {}),
    }


def needs_training(steps: Sequence[Step]) -> list[str]:
    """The steps of a pipeline that train (the runner gives them the train split and the training budget)."""
    return [s.name for s in steps if s.method.needs_training]


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def expand(plugins: Plugins, suite: Suite, models: Sequence[str] = (), pipelines: Sequence[str] = (),
           backends: Sequence[str] = (), schemes: Sequence[str] = (), eval_limit: int | None = None,
           train_budget_s: float | None = None) -> list[Cell]:
    """The cells of ``suite``; a non-empty ``models``/``pipelines``/... replaces that dimension.
    ``train_budget_s`` is set on the cells whose pipeline trains (and only on those).

    Every name is checked first: an unknown one raises UnknownNameError (CLI exit 2) before any work.
    """
    if train_budget_s is not None and not train_budget_s > 0:
        raise UsageError(f"the training budget must be a positive number of seconds, got {train_budget_s}")
    if suite.parts:
        return _expand_composite(plugins, suite, models, pipelines, backends, schemes, eval_limit, train_budget_s)
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
    parsed = {pipeline_name(steps): steps for steps in (parse_pipeline(p, plugins) for p in (pipelines or suite.pipelines))}
    pipes = list(parsed)
    trainers = sorted({name for steps in parsed.values() for name in needs_training(steps)})
    if trainers:
        try:
            dataset.check(("calib", "test", "train"))
        except UsageError as exc:
            raise UsageError(f"{', '.join(trainers)} trains on the train split of {dataset.name}, which cannot be "
                             f"loaded: {exc}") from None
    backs = [plugins.backends.get(b).name for b in (backends or suite.backends)]
    scheme_objs = [parse_scheme(s) for s in (schemes or suite.schemes)]
    limit = eval_limit if eval_limit is not None else suite.eval_limit
    size = dataset.split_size("test") if limit is not None else None
    if limit is not None and size is not None and limit >= size:
        limit = None  # the whole split: the same cell (and hash) as no limit
    cells: list[Cell] = []
    for pipe in pipes:
        for scheme in scheme_objs:
            check_pipeline(parsed[pipe], scheme, pipe)
    for (model, weights), pipe, backend, seed in itertools.product(model_entries, pipes, backs, suite.seeds):
        quantizes = all(s.method.quantizes for s in parsed[pipe])
        for scheme in (scheme_objs if quantizes else [FP32]):
            if quantizes and scheme.is_float:
                continue
            budget = train_budget_s if needs_training(parsed[pipe]) else None
            cells.append(Cell(model, weights, dataset.name, pipe, backend, scheme.name, seed, suite.calib_size,
                              limit, suite.name, train_budget_s=budget))
    return list(dict.fromkeys(cells))


def _expand_composite(plugins: Plugins, suite: Suite, models: Sequence[str], pipelines: Sequence[str],
                      backends: Sequence[str], schemes: Sequence[str], eval_limit: int | None,
                      train_budget_s: float | None) -> list[Cell]:
    """The union of the cells of ``suite``'s parts, under the composite's name. ``models`` narrows each part to its
    own models that match one of them (``name`` matches every weights of it, ``name:weights`` those); the other
    dimensions replace every part's."""

    def resolved(entry: str) -> tuple[str, str]:
        name, _, weights = entry.partition(":")
        return name, weights or plugins.models.get(name).default_weights

    wanted = [(entry.partition(":")[0], entry.partition(":")[2]) for entry in models]
    for name, _ in wanted:
        plugins.models.get(name)  # an unknown name fails here, before any work
    cells: list[Cell] = []
    for part in suite.parts:
        mine = [m for m in part.models if not wanted or any(
            resolved(m)[0] == name and (not weights or resolved(m)[1] == weights) for name, weights in wanted)]
        if not mine:
            continue
        cells += [dataclasses.replace(c, suite=suite.name) for c in
                  expand(plugins, part, mine, pipelines, backends, schemes, eval_limit, train_budget_s)]
    if not cells:
        every = sorted({m for part in suite.parts for m in part.models})
        raise UsageError(f"suite {suite.name!r} has no cells of {', '.join(models)}; its models: {', '.join(every)}")
    return list(dict.fromkeys(cells))


class Workspace:
    """Per-process caches shared by the cells of a run: decoded splits and float weights."""

    def __init__(self, plugins: Plugins, reporter: Reporter = SILENT, batch_size: int = 256,
                 latency: LatencySettings | None = None) -> None:
        self.plugins = plugins
        self.reporter = reporter
        self.batch_size = batch_size
        self.latency = latency  # None: no latency measurement (mqbench run measures it unless --no-latency)
        self._splits: dict[tuple[str, str, int | None, str], Split] = {}
        self._weights: dict[tuple[str, str], Any] = {}
        # Models made by training transform steps, so the cells of one sweep share one training run.
        self._trained: dict[str, tuple[nn.Module, dict[str, Any], dict[str, Any]]] = {}

    def split(self, dataset: str, split: str, limit: int | None = None, preprocess: str = "native") -> Split:
        """A decoded split (decoded once per process; image datasets also cache it on disk)."""
        key = (dataset, split, limit, preprocess)
        if key not in self._splits:
            self._splits[key] = self.plugins.datasets.get(dataset).load_split(split, limit, preprocess, self.reporter)
        return self._splits[key]

    def weights(self, model: str, weights: str) -> ResolvedWeights:
        """The float weights ``weights`` of ``model`` (resolved, and trained first if needed, once per process)."""
        key = (model, weights)
        if key not in self._weights:
            spec = self.plugins.models.get(model)
            wspec = spec.get_weights(weights)
            self._weights[key] = resolve_weights(spec, wspec, self.plugins.datasets.get,
                                                 lambda d, s: self.split(d, s, None, wspec.preprocess), self.reporter)
        return self._weights[key]

    def split_keys(self, cell: Cell) -> list[tuple[str, str, int | None, str]]:
        """The keys (dataset, split, limit, preprocess) of the splits ``cell`` evaluates and calibrates on."""
        preprocess = self.plugins.models.get(cell.model).get_weights(cell.weights).preprocess
        keys: list[tuple[str, str, int | None, str]] = [(cell.dataset, "calib", cell.calib_size, preprocess),
                                                         (cell.dataset, "test", cell.eval_limit, preprocess)]
        if needs_training(parse_pipeline(cell.pipeline, self.plugins)):
            keys.append((cell.dataset, "train", None, preprocess))
        return keys

    def has(self, key: tuple[str, str, int | None, str] | tuple[str, str]) -> bool:
        """Whether this process already holds the split (dataset, split, limit, preprocess) or the weights
        (model, weights) ``key``."""
        return key in self._splits or key in self._weights

    def adopt(self, splits: dict[tuple[str, str, int | None, str], Split],
              weights: dict[tuple[str, str], ResolvedWeights]) -> None:
        """Take splits and weights decoded elsewhere (an executor's driver) instead of loading them again."""
        for key, split in splits.items():
            self._splits.setdefault(key, split)
        for wkey, resolved in weights.items():
            self._weights.setdefault(wkey, resolved)

    def float_model(self, model: str, weights: str) -> tuple[nn.Module, dict[str, Any]]:
        """A fresh float model (eval mode) with ``weights`` loaded, and facts about the weights."""
        spec = self.plugins.models.get(model)
        wspec = spec.get_weights(weights)
        resolved = self.weights(model, weights)
        net = spec.build(self.plugins.datasets.get(wspec.dataset).num_classes, **dict(wspec.build_kwargs))
        load_into(net, copy.deepcopy(resolved.state_dict), f"weights {model}:{weights} ({resolved.source})")
        return net.eval(), {"name": weights, "sha256": resolved.sha256, "source": resolved.source,
                            "float_test_top1_at_training": resolved.meta.get("test_top1")}


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int,
             reporter: Reporter = SILENT, name: str = "float") -> Evaluation:
    """The logits of ``model`` on ``split``; ``name`` (``sim``, ``deployed``, ``integer sim``, ``float``) labels the
    progress bar and the error when the logits are not finite."""
    logits = []
    with torch.inference_mode():
        for inputs, _ in reporter.track(split.batches(batch_size), f"evaluating ({name})",
                                        total=-(-len(split) // batch_size)):
            logits.append(model(inputs).float())
    return Evaluation(torch.cat(logits), split.labels, name)


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


def new_record(cell: Cell, plugins: Plugins) -> dict[str, Any]:
    """The head of ``cell``'s record (schema, id, config and its hash, provenance), status ``ok``."""
    config = cell_config(cell, plugins)
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "record_id": new_record_id(),
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
        "config_hash": config_hash(config), "config": config, "suite": cell.suite, "status": "ok",
        "provenance": provenance.collect(), "timings_s": {},
    }


def failed_record(cell: Cell, plugins: Plugins, exc: BaseException, attempts: int | None = None) -> dict[str, Any]:
    """The record of a cell whose run never returned one (an executor's task failed ``attempts`` times)."""
    record = new_record(cell, plugins)
    record["status"] = "failed"
    record["error"] = {"type": type(exc).__name__, "message": _one_line(str(exc))}
    if attempts is not None:
        record["error"]["attempts"] = attempts
    return record


def _one_line(text: str, limit: int = 2000) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines)[:limit] if lines else "(no message)"


def _transform(model: nn.Module, steps: Sequence[Step], cell: Cell, ctx: StepContext, ws: Workspace,
               timer: _Timer) -> nn.Module:
    """Apply the transform steps. When one of them trains, the result of the quantizing transform steps is kept
    in the Workspace, so the other cells of the sweep with the same model, transforms, seed, data and budget
    reuse it (``qf_sepconv+fp32`` and ``qf_sepconv+minmax`` share one fine-tuning; the reusing record says
    ``reused_in_process`` and carries the cost of the training that made it). ``fp32``, which marks the float
    reference and changes nothing, is applied after them."""
    shared = [s for s in steps if s.method.quantizes]
    key = json.dumps([cell.model, cell.weights, [s.text for s in shared], cell.seed, ws.split_keys(cell),
                      cell.train_budget_s])
    if needs_training(shared) and key in ws._trained:
        trained, notes, training = ws._trained[key]
        ctx.notes.update(copy.deepcopy(notes))
        ctx.training.update({name: {**cost, "reused_in_process": True} for name, cost in training.items()})
        model = copy.deepcopy(trained)
    else:
        for step in shared:
            with timer(f"transform:{step.name}"):
                model = step.method.transform(model, step.config, ctx)
        if needs_training(shared):
            ws._trained[key] = (copy.deepcopy(model), copy.deepcopy(ctx.notes), copy.deepcopy(ctx.training))
    for step in steps:
        if not step.method.quantizes:
            with timer(f"transform:{step.name}"):
                model = step.method.transform(model, step.config, ctx)
    return model


def run_cell(cell: Cell, ws: Workspace) -> dict[str, Any]:
    """Run one cell and return its record (status ``ok``, ``skipped`` or ``failed``); never raises
    for a failure inside the cell, ``SystemExit`` from a plugin included (only KeyboardInterrupt, a real Ctrl-C,
    propagates and stops the run)."""
    plugins = ws.plugins
    timer = _Timer()
    record = new_record(cell, plugins)
    record["timings_s"] = timer.timings
    try:
        steps = parse_pipeline(cell.pipeline, plugins)
        backend = plugins.backends.get(cell.backend)
        record["plugins"] = {
            "model": _plugin_ref(plugins, "model", cell.model),
            "dataset": _plugin_ref(plugins, "dataset", cell.dataset),
            "methods": [{**_plugin_ref(plugins, "method", s.name), "version": s.method.version} for s in steps],
            "backend": {**_plugin_ref(plugins, "backend", cell.backend), "version": backend.version,
                        "info": backend.info()},
            "metrics": [_plugin_ref(plugins, "metric", m.name) for m in plugins.metrics],
        }
        scheme: QuantScheme = parse_scheme(cell.scheme)
        missing = backend.unavailable()
        if missing:
            record["status"], record["skip_reason"] = "skipped", f"backend {backend.name} is unavailable: {missing}"
            return record
        reason = backend.check_scheme(scheme) if not scheme.is_float else None
        if reason:
            record["status"], record["skip_reason"] = "skipped", f"backend {backend.name} cannot run {scheme.name}: {reason}"
            return record
        reason = backend.check_pipeline(cell.pipeline) if backend.calibrates_itself and not scheme.is_float else None
        if reason:
            record["status"] = "skipped"
            record["skip_reason"] = f"backend {backend.name} cannot run the pipeline {cell.pipeline}: {reason}"
            return record
        torch.manual_seed(cell.seed)
        split_keys = ws.split_keys(cell)
        calib_key, eval_key = split_keys[0], split_keys[1]
        train_key = split_keys[2] if len(split_keys) > 2 else None
        preprocess = calib_key[3]
        with timer("load_data"):
            calib = ws.split(*calib_key)
            evalset = ws.split(*eval_key)
            train_split = ws.split(*train_key) if train_key is not None else None
        ctx = StepContext(seed=cell.seed, batch_size=ws.batch_size, reporter=ws.reporter, calib=calib,
                          train=train_split, train_budget_s=cell.train_budget_s)
        record["data"] = {"dataset": cell.dataset, "preprocess": preprocess,
                          "calib": {"split": "calib", "size": len(calib), "fingerprint": calib.fingerprint()},
                          "eval": {"split": "test", "size": len(evalset), "fingerprint": evalset.fingerprint()}}
        if train_split is not None:
            record["data"]["train"] = {"split": "train", "size": len(train_split),
                                       "fingerprint": train_split.fingerprint()}
        with timer("load_model"):
            model, weights_info = ws.float_model(cell.model, cell.weights)
        record["weights"] = weights_info
        model = _transform(model, [s for s in steps if s.stage == "transform"], cell, ctx, ws, timer)
        evaluations: dict[str, Evaluation] = {}
        deployed: Deployed | None = None
        if cell.layerwise_images and (scheme.is_float or backend.calibrates_itself):
            record["layerwise_unavailable"] = ("an fp32 cell quantizes nothing" if scheme.is_float else
                                               f"backend {backend.name} quantizes with its own runtime: no QuantSim "
                                               "to analyse")
        if scheme.is_float:
            with timer("deploy"):
                deployed = backend.deploy_float(model)
            with timer("evaluate"):
                which = "sim" if backend.simulation_only else "deployed"
                evaluations[which] = evaluate(deployed, evalset, ws.batch_size, ws.reporter, f"float {which}")
        elif backend.calibrates_itself:  # a peer row: the runtime's own quantizer, no QuantSim
            with timer(f"calibrate:{backend.name}"):
                deployed = backend.quantize(model, scheme, calib, cell.pipeline, ws.reporter)
            with timer("evaluate_deployed"):
                evaluations["deployed"] = evaluate(deployed, evalset, ws.batch_size, ws.reporter, "deployed")
        else:
            with timer("prepare"):
                qsim = backend.prepare(model, scheme)
            for step in steps:
                if step.stage == "calibrate":
                    with timer(f"calibrate:{step.name}"):
                        step.method.calibrate(qsim, calib, step.config, ctx)
            for step in steps:
                if step.stage == "refine":
                    with timer(f"refine:{step.name}"):
                        step.method.refine(qsim, model, calib, step.config, ctx)
            with timer("evaluate_sim"):
                evaluations["sim"] = evaluate(qsim.eval(), evalset, ws.batch_size, ws.reporter, "sim")
            if cell.layerwise_images:
                with timer("layerwise"):
                    images = next(evalset.head(cell.layerwise_images).batches(cell.layerwise_images))[0]
                    detail = analyze(qsim, images, seed=cell.seed, reporter=ws.reporter)
                record["layerwise"] = {"images": detail["images"], "split": "test", **detail["summary"]}
                record[ATTACHMENTS_KEY] = {"layerwise": detail}
            if not backend.simulation_only:
                exact = backend.integer_simulation(qsim)
                if exact is not None:
                    with timer("evaluate_integer_sim"):
                        try:
                            evaluations["integer_sim"] = evaluate(exact, evalset, ws.batch_size, ws.reporter,
                                                                  "integer sim")
                        except UnsupportedOp as exc:  # the deployment is still measured; say why no int-sim
                            record["integer_sim_unavailable"] = str(exc)
                with timer("convert"):
                    deployed = backend.convert(qsim)
                with timer("evaluate_deployed"):
                    evaluations["deployed"] = evaluate(deployed, evalset, ws.batch_size, ws.reporter, "deployed")
            record["qparams_summary"] = {"weight_quantizers": len(qsim.weight_quantizers),
                                         "activation_quantizers": len(qsim.act_quantizers)}
        if "sim" in evaluations and "deployed" in evaluations:
            record["agreement"] = agreement(evaluations["sim"].logits, evaluations["deployed"].logits)
        if "integer_sim" in evaluations and "deployed" in evaluations:
            record["agreement_integer_sim"] = agreement(evaluations["integer_sim"].logits,
                                                        evaluations["deployed"].logits)
        if deployed is not None and hasattr(deployed, "deployment_info"):
            record["deployment"] = deployed.deployment_info()
        if ws.latency is not None and deployed is not None and not backend.simulation_only:
            with timer("latency"):
                float_model = None if scheme.is_float else backend.deploy_float(model)
                images = next(iter(evalset.batches(max(ws.latency.batch_sizes))))[0]
                record["latency"] = measure_cell(deployed, float_model, images, ws.latency, ws.reporter)
        if ctx.notes:
            record["method_notes"] = ctx.notes
        if ctx.training:  # what the steps that train (transform or refine) cost
            record["training"] = ctx.training
        with timer("metrics"):
            record["metrics"] = {
                which: {metric.name: metric.compute(ev) for metric in plugins.metrics}
                for which, ev in evaluations.items()}
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as exc:  # a cell's failure is stored, never fatal to the run
        record["status"] = "failed"
        message = str(exc)
        if isinstance(exc, SystemExit):  # sys.exit() in a plugin must not end the sweep silently
            message = f"a plugin called sys.exit({exc.code!r}) inside the cell"
        record["error"] = {"type": type(exc).__name__, "message": message,
                           "traceback": traceback.format_exc(limit=8)[-4000:]}
    bad = _replace_non_finite(record)
    if bad:  # JSON has no NaN/inf: keep the record (as failed, the values nulled) rather than lose the cell
        record["status"] = "failed"
        record.setdefault("error", {"type": "NonFiniteValue",
                                    "message": f"non-finite values (NaN or inf) in {', '.join(bad[:5])}"
                                               + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")})
    return record


def _replace_non_finite(obj: Any, path: str = "") -> list[str]:
    """Replace every NaN/inf float inside ``obj`` (dicts and lists) by None; return their dotted paths."""
    bad: list[str] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in list(items):
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, float) and not math.isfinite(value):
            obj[key] = None
            bad.append(where)
        elif isinstance(value, (dict, list)):
            bad += _replace_non_finite(value, where)
    return bad


def _failed_as_invalid(record: dict[str, Any], problem: str) -> dict[str, Any]:
    """A record that would break the record schema, stored instead as its cell's failure (its head kept)."""
    keep = ("schema", "schema_version", "record_id", "created", "config_hash", "config", "suite", "provenance", "executor")
    head: dict[str, Any] = {k: record[k] for k in keep if k in record}
    head.update(status="failed", error={"type": "InvalidRecord", "message": f"the cell's record is invalid: {problem}"})
    return head


def _satisfied(cell: Cell, record: dict[str, Any] | None) -> bool:
    """Whether the newest stored record of ``cell`` (None: none) answers it: it exists, and holds the
    layer-wise analysis the cell asks for, unless the cell has nothing to analyse (float, skipped, a peer
    runtime that quantizes itself: no QuantSim, so the record says ``layerwise_unavailable``)."""
    if record is None:
        return False
    if not cell.layerwise_images or record["status"] == "skipped" or "layerwise_unavailable" in record:
        return True
    if "qparams_summary" not in record:  # stored without a QuantSim (fp32, a peer runtime): nothing to analyse
        return True
    available = ((record.get("data") or {}).get("eval") or {}).get("size") or cell.layerwise_images
    return int((record.get("layerwise") or {}).get("images") or 0) >= min(cell.layerwise_images, available)


class Executor(Protocol):
    """Runs cells and yields their records as they finish (in any order); the driver (:func:`run`) stores
    each one. An executor never writes to the results directory; it says in ``record["executor"]`` where and
    how the cell ran (at least ``{"name": ...}``)."""

    name: str

    def map(self, cells: Sequence[Cell], ws: Workspace) -> Iterator[dict[str, Any]]: ...


class InProcessExecutor:
    """Runs cells one after another in this process."""

    name = "in-process"

    def map(self, cells: Sequence[Cell], ws: Workspace) -> Iterator[dict[str, Any]]:
        for cell in cells:
            record = run_cell(cell, ws)
            record["executor"] = {"name": self.name}
            yield record


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
    stored = {} if force else store.completed()
    todo = [c for c in cells if not _satisfied(c, stored.get(config_hash(cell_config(c, ws.plugins))))]
    summary = RunSummary(to_run=len(todo), already_stored=len(cells) - len(todo))
    executor = executor or InProcessExecutor()
    for record in ws.reporter.track(executor.map(todo, ws), "cells", total=len(todo)):
        try:
            try:
                store.append(record)
            except InvalidRecordError as exc:  # e.g. a metric plugin returned the wrong types: the cell failed
                record = _failed_as_invalid(record, exc.problem)
                store.append(record)
        except OSError as exc:  # disk full, directory gone or read-only: stop, with nothing half-written
            c = record["config"]
            raise ResultsDirError(
                f"cannot store the record of {c['model']} {c['pipeline']} {c['scheme']} {c['backend']} in "
                f"{store.records_dir} ({exc.strerror or exc}); {len(summary.records)} of {len(todo)} cells of this run "
                "were stored, the rest not run: free space (or fix the directory) and run the same command again, "
                "which runs only the missing cells") from None
        summary.records.append(record)
        if on_record is not None:
            on_record(record)
    return summary


__all__ = [
    "PIPELINE_HELP",
    "Cell",
    "Executor",
    "InProcessExecutor",
    "RunSummary",
    "Step",
    "Workspace",
    "cell_config",
    "check_pipeline",
    "config_hash",
    "evaluate",
    "expand",
    "failed_record",
    "new_record",
    "parse_pipeline",
    "pipeline_name",
    "run",
    "run_cell",
]
