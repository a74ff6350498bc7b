"""Reading the first wave's records in the toolkit x runtime shape (records on disk are never rewritten).

The first wave ran the peer toolkits as backends: ``ort-default`` (ONNX Runtime's ``quantize_static``, the
calibration named by the pipeline, run on ONNX Runtime) and ``torch-default`` (torch.ao's default qconfig,
run on the x86 engine). Now a toolkit recipe is the quantizer and the runtime is named apart: such a record
is read as the cell it is today (``ort:minmax`` on ``ort-qdq``, ``torch.ao:default`` on ``torch-x86``), with
its config hash recomputed, so a sweep finds it stored and the leaderboard shows it as the same row a new run
gives. What it was is kept under ``migrated_from``.
"""

from __future__ import annotations

from typing import Any

from mqbench.record_schema import config_hash

_ORT = {"minmax": "MinMax", "entropy": "Entropy"}
_TORCH = {"mse": ("default", "HistogramObserver"), "minmax": ("minmax", "MinMaxObserver")}
CALIB_BATCH = 32  # both tools' calibration batch in the first wave (and their recipes' default now)


def _peer(backend: Any, pipeline: Any) -> tuple[str, str, dict[str, Any]] | None:
    """(runtime, quantizer text, quantizer config) of a first-wave peer cell, or None for any other cell."""
    if backend == "ort-default" and pipeline in _ORT:
        config = {"version": 1, "calibrate_method": _ORT[pipeline], "calib_batch": CALIB_BATCH}
        return "ort-qdq", f"ort:{pipeline}", {"toolkit": "ort", "recipe": pipeline, "config": config}
    if backend == "torch-default" and pipeline in _TORCH:
        recipe, observer = _TORCH[pipeline]
        config = {"version": 1, "activation_observer": observer, "calib_batch": CALIB_BATCH}
        return "torch-x86", f"torch.ao:{recipe}", {"toolkit": "torch.ao", "recipe": recipe, "config": config}
    return None


def migrate(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (already valid) in today's shape: a new dict where it changes, the same one otherwise."""
    config = record["config"]
    peer = _peer(config.get("backend"), config.get("pipeline"))
    if peer is None:
        return record
    runtime, quantizer, qconfig = peer
    new = {k: v for k, v in config.items() if k != "steps"}
    new.update(pipeline=quantizer, backend=runtime, quantizer=qconfig)
    return {**record, "config": new, "config_hash": config_hash(new),
            "migrated_from": {"backend": config["backend"], "pipeline": config["pipeline"],
                              "config_hash": record["config_hash"]}}


__all__ = ["migrate"]
