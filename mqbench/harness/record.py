"""A cell's record: its head (config, hash, provenance), what its plugins are, and the checks before it is stored."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from mqbench import provenance
from mqbench.harness.cell import Cell, ResolvedCell, resolve
from mqbench.harness.quantizer import Pipeline
from mqbench.plugins import Plugins
from mqbench.store import SCHEMA, SCHEMA_VERSION, new_record_id


def new_record(cell: Cell, plugins: Plugins, resolved: ResolvedCell | None = None) -> dict[str, Any]:
    """The head of ``cell``'s record (schema, id, config and its hash, provenance), status ``ok``."""
    resolved = resolved or resolve(cell, plugins)
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "record_id": new_record_id(),
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
        "config_hash": resolved.config_hash, "config": resolved.config, "suite": cell.suite, "status": "ok",
        "provenance": provenance.collect(runtime_packages(plugins)), "timings_s": {},
    }


def runtime_packages(plugins: Plugins) -> list[str]:
    """The distributions every registered runtime and toolkit names as part of a record's environment."""
    names = {p for item in [*plugins.runtimes, *plugins.toolkits] for p in item.packages}
    return sorted(names)


def plugin_refs(resolved: ResolvedCell, plugins: Plugins) -> dict[str, Any]:
    """Which plugin (distribution, version) provided each thing the cell used, with the runtime's facts."""
    cell, runtime = resolved.cell, resolved.runtime
    refs: dict[str, Any] = {
        "model": _ref(plugins, "model", cell.model), "dataset": _ref(plugins, "dataset", cell.dataset),
        "methods": [{**_ref(plugins, "method", s.name), "version": s.method.version}
                    for s in (resolved.quantizer.steps if isinstance(resolved.quantizer, Pipeline) else ())],
        "backend": {**_ref(plugins, "runtime", runtime.name), "version": runtime.version, "info": runtime.info()},
        "metrics": [_ref(plugins, "metric", m.name) for m in plugins.metrics],
    }
    if not isinstance(resolved.quantizer, Pipeline):
        toolkit = resolved.quantizer.toolkit
        refs["toolkit"] = {**_ref(plugins, "toolkit", toolkit.name), "version": toolkit.version, "info": toolkit.info()}
    return refs


def _ref(plugins: Plugins, kind: str, name: str) -> dict[str, Any]:
    info = plugins.plugin_of(kind, name)
    return {"name": name, "plugin": info.name, "distribution": info.distribution, "plugin_version": info.version}


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


def null_non_finite(record: dict[str, Any]) -> None:
    """JSON has no NaN/inf: keep the record (as failed, the values nulled) rather than lose the cell."""
    bad = _replace_non_finite(record)
    if bad:
        record["status"] = "failed"
        record.setdefault("error", {"type": "NonFiniteValue",
                                    "message": f"non-finite values (NaN or inf) in {', '.join(bad[:5])}"
                                               + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")})


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


def failed_as_invalid(record: dict[str, Any], problem: str) -> dict[str, Any]:
    """A record that would break the record schema, stored instead as its cell's failure (its head kept)."""
    keep = ("schema", "schema_version", "record_id", "created", "config_hash", "config", "suite", "provenance", "executor")
    head: dict[str, Any] = {k: record[k] for k in keep if k in record}
    head.update(status="failed", error={"type": "InvalidRecord", "message": f"the cell's record is invalid: {problem}"})
    return head


def satisfied(cell: Cell, record: dict[str, Any] | None) -> bool:
    """Whether the newest stored record of ``cell`` (None: none) answers it: it exists, and holds the
    layer-wise analysis the cell asks for, unless the cell has nothing to analyse (float, skipped, a toolkit's
    quantizer: no QuantSim, so the record says ``layerwise_unavailable``)."""
    if record is None:
        return False
    if not cell.layerwise_images or record["status"] == "skipped" or "layerwise_unavailable" in record:
        return True
    if "qparams_summary" not in record:  # stored without a QuantSim (fp32, a toolkit): nothing to analyse
        return True
    available = ((record.get("data") or {}).get("eval") or {}).get("size") or cell.layerwise_images
    return int((record.get("layerwise") or {}).get("images") or 0) >= min(cell.layerwise_images, available)


__all__ = ["failed_as_invalid", "failed_record", "new_record", "null_non_finite", "plugin_refs", "runtime_packages",
           "satisfied"]
