"""The declared schema of a stored record (schema ``mqbench.record``, version 1), and its validator.

``RECORD_SCHEMA`` is a JSON Schema (draft 2020-12) of every field that mqbench itself reads back from a record: the
leaderboards, the published page, the papers section, ``mqbench analyze`` and the harness's resume logic. Fields it
does not declare may be present (plugins and newer mqbench minor versions add some) and are kept as they are. A file
that fails the schema is not a record: the store lists it by name with the first problem found and leaves it out
(never modifies it). ``mqbench store schema`` prints the schema; ``docs/RECORDS.md`` explains the fields.

``problem(data)`` checks the schema with a small validator of the keywords used here (``type``, ``properties``,
``required``, ``additionalProperties``, ``items``, ``prefixItems``, ``enum``, ``minimum``, ``maximum``, ``pattern``,
``minLength``), then what a schema cannot say: the fields a status needs, and an accuracy whose value, count and
per-image outcomes agree. Numbers must be finite (JSON has no NaN; Python's ``json`` reads one anyway).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

NUMBER: dict[str, Any] = {"type": "number"}
NUMBER_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}
INT: dict[str, Any] = {"type": "integer"}
COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
STR: dict[str, Any] = {"type": "string"}
STR_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}
SHARE: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1}
SHARE_OR_NULL: dict[str, Any] = {"type": ["number", "null"], "minimum": 0, "maximum": 1}


def obj(properties: dict[str, Any] | None = None, required: tuple[str, ...] = (), values: Any = True) -> dict[str, Any]:
    """An object schema: declared ``properties``, ``required`` keys, and ``values`` for every other key."""
    return {"type": "object", "properties": properties or {}, "required": list(required),
            "additionalProperties": values}


TOPK = obj({"value": SHARE, "correct": COUNT,
            "ci95": {"type": "array", "prefixItems": [SHARE, SHARE], "minItems": 2, "maxItems": 2}},
           ("value", "ci95"))
ACCURACY = obj({"n": COUNT, "top1": TOPK, "top5": TOPK, "top1_outcomes": {"type": "string", "pattern": "^[0-9a-f]*$"}},
               ("n", "top1", "top5"))
AGREEMENT = obj({"top1_agreement": SHARE, "images": COUNT, "logit_sqnr_db": NUMBER_OR_NULL,
                 "max_abs_logit_diff": NUMBER_OR_NULL}, ("top1_agreement",))
TIMED = obj({"batch_size": COUNT, "threads": COUNT, "median_ms": NUMBER_OR_NULL, "images_per_s": NUMBER_OR_NULL})
LATENCY = obj({"cores": {"type": ["integer", "null"], "minimum": 0}, "deployed": obj(values=TIMED),
               "float": obj(values=TIMED), "speedup": obj(values=NUMBER_OR_NULL),
               "size_bytes": obj(values={"type": ["integer", "null"], "minimum": 0}),
               "float_reused_in_process": {"type": "boolean"}})
DROP = obj({"layer": STR, "kind": STR, "sqnr_db": NUMBER_OR_NULL, "drop_db": NUMBER}, ("layer", "drop_db"))
LOCAL = obj({"layer": STR, "kind": STR, "sqnr_db": NUMBER}, ("layer", "kind", "sqnr_db"))
LAYERWISE = obj({"images": COUNT, "layers": COUNT, "split": STR, "final_sqnr_db": NUMBER_OR_NULL,
                 "final_sqnr_capped": {"type": ["boolean", "null"]}, "slope_db_per_layer": NUMBER_OR_NULL,
                 "largest_drops": {"type": "array", "items": DROP},
                 "worst_local": {"type": "array", "items": LOCAL},
                 "weight_range_ratio_median_by_kind": obj(values=NUMBER_OR_NULL)})
STEP = obj({"method": STR, "stage": {"enum": ["transform", "calibrate", "refine"]}, "config": obj()},
           ("method", "stage", "config"))
CONFIG = obj({"model": STR, "weights": STR, "dataset": STR, "pipeline": STR, "backend": STR, "scheme": STR,
              "seed": INT, "calib_size": {"type": ["integer", "null"], "minimum": 1},
              "eval_limit": {"type": ["integer", "null"], "minimum": 1}, "steps": {"type": "array", "items": STEP},
              "quantizer": obj({"toolkit": STR, "recipe": STR, "config": obj()}, ("toolkit", "recipe", "config")),
              "train_budget_s": NUMBER_OR_NULL},
             ("model", "weights", "dataset", "pipeline", "backend", "scheme", "seed"))
PLUGIN_REF = obj({"name": STR, "plugin": STR, "distribution": STR_OR_NULL, "plugin_version": STR_OR_NULL})
SPLIT_INFO = obj({"split": STR, "size": COUNT, "fingerprint": STR})
CPU = obj({"model": STR, "machine": STR, "isa": {"type": "array", "items": STR}})
PROVENANCE = obj({"mqbench": STR, "torch": STR, "onnxruntime": STR_OR_NULL, "packages": obj(values=STR_OR_NULL),
                  "threads": {"type": ["integer", "null"]}, "allocator": obj({"tuned": {"type": "boolean"}}, ("tuned",)),
                  "cpu": CPU, "git": obj({"commit": STR_OR_NULL, "dirty": {"type": ["boolean", "null"]}})})
ERROR = obj({"type": STR, "message": STR, "traceback": STR, "attempts": COUNT}, ("type", "message"))
ATTACHMENT = obj({"path": {"type": "string", "minLength": 1}, "sha256": STR, "bytes": COUNT}, ("path", "sha256"))

RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "mqbench.record/1",
    "title": "mqbench record (schema_version 1)",
    "description": "One finished cell: its config and hash, status, metrics and provenance. Append-only.",
    **obj({
        "schema": {"const": "mqbench.record"}, "schema_version": {"type": "integer", "minimum": 1},
        "record_id": {"type": "string", "minLength": 1}, "created": {"type": "string", "minLength": 1},
        "config_hash": {"type": "string", "minLength": 1}, "config": CONFIG,
        "status": {"enum": ["ok", "failed", "skipped"]}, "suite": STR_OR_NULL,
        "skip_reason": STR, "error": ERROR,
        "metrics": obj(values=obj({"accuracy": ACCURACY}, values=obj())),
        "agreement": AGREEMENT, "agreement_integer_sim": AGREEMENT, "latency": LATENCY, "layerwise": LAYERWISE,
        "layerwise_unavailable": STR, "integer_sim_unavailable": STR,
        "quantsim_reused_in_process": obj({"from_backend": STR, "timings_s": obj(values=NUMBER)}, ("from_backend",)),
        "calibration_reused_in_process": obj({"steps": {"type": "array", "items": STR}, "timings_s": obj(values=NUMBER)},
                                             ("steps",)),
        "sim_evaluation": obj({"memory_format": {"enum": ["contiguous", "channels_last"]}, "batch_size": COUNT}),
        "timings_s": obj(values=NUMBER), "training": obj(values=obj({"seconds": NUMBER_OR_NULL})),
        "method_notes": obj(), "qparams_summary": obj(values=COUNT),
        "deployment": obj(values=obj({"float_compute_ops": obj(values=COUNT)})),
        "provenance": PROVENANCE,
        "weights": obj({"name": STR, "sha256": STR_OR_NULL, "source": STR_OR_NULL,
                        "float_test_top1_at_training": SHARE_OR_NULL}),
        "data": obj({"dataset": STR, "preprocess": STR, "calib": SPLIT_INFO, "eval": SPLIT_INFO, "train": SPLIT_INFO}),
        "plugins": obj({"model": PLUGIN_REF, "dataset": PLUGIN_REF, "backend": obj({"info": obj()}),
                        "methods": {"type": "array", "items": PLUGIN_REF},
                        "metrics": {"type": "array", "items": PLUGIN_REF}}),
        "executor": obj({"name": STR}, ("name",)),
        "attachments": obj(values=ATTACHMENT),
    }, ("schema", "schema_version", "record_id", "created", "config_hash", "config", "status")),
}

# What each status needs besides the common fields.
STATUS_NEEDS = {"ok": "metrics", "failed": "error", "skipped": "skip_reason"}

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _where(path: str) -> str:
    return f"field {path!r}" if path else "the record"


def check(value: Any, schema: dict[str, Any] | bool, path: str = "") -> str | None:
    """The first way ``value`` breaks ``schema`` (None when it conforms), naming the field by its dotted path."""
    if schema is True:
        return None
    if schema is False:
        return f"{_where(path)} is not allowed here"
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in names):
            return f"{_where(path)} is a {type(value).__name__}, expected {' or '.join(names)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{_where(path)} is {value} (not a finite number)"
    if "const" in schema and value != schema["const"]:
        return f"{_where(path)} is {value!r}, expected {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{_where(path)} is {value!r}, expected one of {schema['enum']}"
    return _check_bounds(value, schema, path) or _check_items(value, schema, path) or _check_object(value, schema, path)


def _check_bounds(value: Any, schema: dict[str, Any], path: str) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{_where(path)} is {value}, below its minimum {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{_where(path)} is {value}, above its maximum {schema['maximum']}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{_where(path)} is empty"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{_where(path)} does not match {schema['pattern']}"
    return None


def _check_items(value: Any, schema: dict[str, Any], path: str) -> str | None:
    if not isinstance(value, list):
        return None
    if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
        return f"{_where(path)} has {len(value)} items"
    for i, item in enumerate(value):
        prefix = schema.get("prefixItems") or []
        sub = prefix[i] if i < len(prefix) else schema.get("items", True)
        problem = check(item, sub, f"{path}[{i}]")
        if problem:
            return problem
    return None


def _check_object(value: Any, schema: dict[str, Any], path: str) -> str | None:
    if not isinstance(value, dict):
        return None
    for key in schema.get("required", ()):
        if key not in value:
            return f"{_where(path)} lacks the required field {key!r}" if path else f"record field {key!r} is missing"
    properties = schema.get("properties", {})
    for key, item in value.items():
        sub = properties.get(key, schema.get("additionalProperties", True))
        problem = check(item, sub, f"{path}.{key}" if path else str(key))
        if problem:
            return problem
    return None


def _non_finite(value: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinity anywhere in ``value`` (declared fields or not), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path and isinstance(key, str) else
                            f"{path}[{key}]" if path else str(key))
        if found is not None:
            return found
    return None


def problem(data: Any) -> str | None:
    """None when ``data`` is a well-formed record of schema version 1, otherwise the first problem found."""
    found = check(data, RECORD_SCHEMA)
    if found:
        return found
    where = _non_finite(data)
    if where is not None:
        return f"field {where!r} is not a finite number"
    need = STATUS_NEEDS[data["status"]]
    if need not in data:
        return f"a record of status {data['status']!r} needs the field {need!r}"
    for which, metrics in (data.get("metrics") or {}).items():
        acc = metrics.get("accuracy")
        found = _accuracy_problem(acc, f"metrics.{which}.accuracy") if acc is not None else None
        if found:
            return found
    return None


def _accuracy_problem(acc: dict[str, Any], path: str) -> str | None:
    """An accuracy whose parts disagree: a value that is not correct / n, an interval that does not hold it, or
    per-image outcomes of another length."""
    n = acc["n"]
    for k in ("top1", "top5"):
        part = acc[k]
        correct = part.get("correct")
        if correct is not None and (correct > n or (n and not math.isclose(part["value"], correct / n, abs_tol=1e-9))):
            return f"field {path}.{k} says {part['value']} but {correct} of {n} images"
        lo, hi = part["ci95"]
        if not lo - 1e-9 <= part["value"] <= hi + 1e-9:
            return f"field {path}.{k}.ci95 {part['ci95']} does not contain its value {part['value']}"
    outcomes = acc.get("top1_outcomes")
    if outcomes is not None and len(outcomes) != 2 * ((n + 7) // 8):
        return f"field {path}.top1_outcomes holds {len(outcomes) // 2} bytes, not the {(n + 7) // 8} of {n} images"
    return None


__all__ = ["RECORD_SCHEMA", "STATUS_NEEDS", "check", "config_hash", "problem"]


def config_hash(config: dict[str, Any]) -> str:
    """The sha256 of a cell's config (canonical JSON): the key under which its records are found."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
