"""Running cells: one cell (:func:`run_cell`), the executors that run many, and the driver that stores them.

The flow of one cell::

    resolved = resolve(cell)                         quantizer parsed, runtime and scheme looked up, once
    skip_reason(resolved)                            runtime/toolkit unavailable, scheme or format it cannot run
    calib, evalset[, train] = workspace splits       decoded once per process
    model  = float weights, then transform steps     (training transforms shared by the sweep's cells)
    flow_of(resolved)(run)                           float, toolkit or QuantSim flow (flows.py)
    measure_all(run)                                 layer-wise, integer sim, agreement, deployment, latency, metrics

Executors are registered by name (:data:`EXECUTORS`: ``in-process``, ``ray``); each yields records as cells
finish and the driver (:func:`run`) alone writes them, so a killed run loses at most the cells in flight.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mqbench.errors import ResultsDirError, UnsupportedArtifact
from mqbench.harness.cell import Cell, ResolvedCell, resolve
from mqbench.harness.flows import CellRun, Timer, flow_of, transformed
from mqbench.harness.measurements import measure_all
from mqbench.harness.quantizer import ToolkitRecipe
from mqbench.harness.record import (
    failed_as_invalid,
    new_record,
    null_non_finite,
    plugin_refs,
    satisfied,
)
from mqbench.harness.workspace import Workspace
from mqbench.methods import StepContext
from mqbench.store import InvalidRecordError, Store


def skip_reason(cell: ResolvedCell) -> str | None:
    """Why ``cell`` cannot run here (stored as ``skipped``), or None."""
    runtime, scheme, quantizer = cell.runtime, cell.scheme, cell.quantizer
    missing = runtime.unavailable()
    if missing:
        return f"backend {runtime.name} is unavailable: {missing}"
    reason = runtime.check_scheme(scheme) if not scheme.is_float else None
    if reason:
        return f"backend {runtime.name} cannot run {scheme.name}: {reason}"
    if isinstance(quantizer, ToolkitRecipe):
        toolkit = quantizer.toolkit
        missing = toolkit.unavailable()
        if missing:
            return f"toolkit {toolkit.name} is unavailable: {missing}"
        reason = toolkit.check_scheme(scheme, quantizer.config)
        if reason:
            return f"toolkit {toolkit.name} cannot produce {scheme.name}: {reason}"
    reason = runtime.check_format(quantizer.output_format)
    if reason:
        return f"backend {runtime.name} cannot run {quantizer.name}'s {quantizer.output_format} artifact: {reason}"
    return None


def start(cell: ResolvedCell, ws: Workspace, record: dict[str, Any], timer: Timer) -> CellRun:
    """Load the cell's data and float model (transformed) and describe them in the record."""
    c = cell.cell
    keys = cell.split_keys
    with timer("load_data"):
        calib, evalset = ws.split(*keys[0]), ws.split(*keys[1])
        train = ws.split(*keys[2]) if len(keys) > 2 else None
    ctx = StepContext(seed=c.seed, batch_size=ws.batch_size, reporter=ws.reporter, calib=calib, train=train,
                      train_budget_s=c.train_budget_s)
    record["data"] = {"dataset": c.dataset, "preprocess": cell.preprocess,
                      "calib": {"split": "calib", "size": len(calib), "fingerprint": calib.fingerprint()},
                      "eval": {"split": "test", "size": len(evalset), "fingerprint": evalset.fingerprint()}}
    if train is not None:
        record["data"]["train"] = {"split": "train", "size": len(train), "fingerprint": train.fingerprint()}
    with timer("load_model"):
        model, record["weights"] = ws.float_model(c.model, c.weights)
    model = transformed(model, cell, ctx, ws, timer)
    return CellRun(cell, ws, record, timer, ctx, calib, evalset, model)


def run_cell(cell: Cell, ws: Workspace) -> dict[str, Any]:
    """Run one cell and return its record (status ``ok``, ``skipped`` or ``failed``); never raises
    for a failure inside the cell, ``SystemExit`` from a plugin included (only KeyboardInterrupt, a real Ctrl-C,
    propagates and stops the run)."""
    timer = Timer()
    resolved = resolve(cell, ws.plugins)
    record = new_record(cell, ws.plugins, resolved)
    record["timings_s"] = timer.timings
    try:
        record["plugins"] = plugin_refs(resolved, ws.plugins)
        reason = skip_reason(resolved)
        if reason:
            record["status"], record["skip_reason"] = "skipped", reason
            return record
        torch.manual_seed(cell.seed)
        run = start(resolved, ws, record, timer)
        flow_of(resolved)(run)
        measure_all(run)
    except KeyboardInterrupt:
        raise
    except UnsupportedArtifact as exc:  # the runtime cannot express what the quantizer made: a skip, not a failure
        record.pop("metrics", None)
        record["status"], record["skip_reason"] = "skipped", f"backend {resolved.runtime.name} cannot run it: {exc}"
    except (Exception, SystemExit) as exc:  # a cell's failure is stored, never fatal to the run
        record["status"] = "failed"
        message = str(exc)
        if isinstance(exc, SystemExit):  # sys.exit() in a plugin must not end the sweep silently
            message = f"a plugin called sys.exit({exc.code!r}) inside the cell"
        record["error"] = {"type": type(exc).__name__, "message": message,
                           "traceback": traceback.format_exc(limit=8)[-4000:]}
    null_non_finite(record)
    return record


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


def _ray(options: dict[str, Any]) -> Executor:
    from mqbench.harness.ray_executor import RayExecutor, RayExecutorConfig

    return RayExecutor(RayExecutorConfig(**options))


# name -> factory(options); ``mqbench run --executor NAME`` picks one.
EXECUTORS: dict[str, Callable[[dict[str, Any]], Executor]] = {
    "in-process": lambda options: InProcessExecutor(),
    "ray": _ray,
}


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
    todo = [c for c in cells if not satisfied(c, stored.get(resolve(c, ws.plugins).config_hash))]
    summary = RunSummary(to_run=len(todo), already_stored=len(cells) - len(todo))
    executor = executor or InProcessExecutor()
    for record in ws.reporter.track(executor.map(todo, ws), "cells", total=len(todo)):
        _store(store, record, summary, len(todo))
        summary.records.append(record)
        if on_record is not None:
            on_record(record)
    return summary


def _store(store: Store, record: dict[str, Any], summary: RunSummary, todo: int) -> None:
    try:
        try:
            store.append(record)
        except InvalidRecordError as exc:  # e.g. a metric plugin returned the wrong types: the cell failed
            replacement = failed_as_invalid(record, exc.problem)
            record.clear()
            record.update(replacement)
            store.append(record)
    except OSError as exc:  # disk full, directory gone or read-only: stop, with nothing half-written
        c = record["config"]
        raise ResultsDirError(
            f"cannot store the record of {c['model']} {c['pipeline']} {c['scheme']} {c['backend']} in "
            f"{store.records_dir} ({exc.strerror or exc}); {len(summary.records)} of {todo} cells of this run "
            "were stored, the rest not run: free space (or fix the directory) and run the same command again, "
            "which runs only the missing cells") from None


__all__ = ["EXECUTORS", "Executor", "InProcessExecutor", "RunSummary", "run", "run_cell", "skip_reason"]
