"""Leaderboard tables derived from records only: rich (terminal), Markdown, CSV and JSON.

For each config hash the newest record wins (records are append-only; ``--force`` reruns add newer
ones). A row's accuracy is the deployed model's where the backend runs a real executable, otherwise
the simulation's; real-kernel rows also show the simulation's top-1 and how often the two agree.
``delta_top1`` is the difference to the ``fp32`` row of the same dataset, model,
weights, seed and evaluation size.

Significance (val-1300 is small): rows evaluated on the same images are compared with the exact
McNemar test on their per-image top-1 outcomes. ``p_vs_fp32`` compares a row with its ``fp32`` row;
``p_vs_best`` with the most accurate row of the same model and scheme (the scheme's leader). Tables
mark a difference significant at 95% (p < 0.05): ``*`` after the delta to fp32, and ``≈ best`` /
``< best`` for a row that is / is not statistically tied with its scheme's leader.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mqbench.metrics.accuracy import mcnemar_p, unpack_bits
from mqbench.report import layerwise
from mqbench.report.escape import md_cell, md_link, md_paragraph, term
from mqbench.store import LoadResult, newest_per_config

FIELDS = ("suite", "dataset", "model", "weights", "environment", "runtime_version", "pipeline", "backend", "scheme", "seed",
          "status",
          "evaluated",
          "top1", "top1_lo", "top1_hi", "top5", "top5_lo", "top5_hi", "n", "delta_top1", "p_vs_fp32", "p_vs_best",
          "best_in_scheme", "sim_top1", "agreement", "logit_sqnr_db", "int_sim_top1", "agreement_int_sim", "method_s",
          "note", "record",
          "lat_b1_t1_ms", "lat_b1_tall_ms", "ips_b32_t1", "ips_b32_tall", "float_ips_b32_tall", "speedup_b32_tall",
          "size_bytes", "cores", "toolkit_row", "mqbench_best", "p_vs_mqbench_best", "calib_n")
METHOD_STAGES = ("transform:", "calibrate:", "refine:")
ALPHA = 0.05


def _accuracy(record: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    metrics = record.get("metrics") or {}
    for which in ("deployed", "sim"):
        acc = (metrics.get(which) or {}).get("accuracy")
        if acc:
            return which, acc
    return None, None


def environment(record: dict[str, Any]) -> str:
    """What a record's figures depend on beyond its config and its runtime: the machine (CPU, ISA flags, threads) and
    the libraries every cell uses (torch; onnxruntime, the first wave's runtime and its export path). Rows of
    different environments are never compared with each other (no delta, no significance). The runtime's own
    version is :func:`runtime_version`: rows of two versions of one runtime are split apart (``rows_from_records``)."""
    prov = record.get("provenance") or {}
    cpu = prov.get("cpu") or {}
    isa = ",".join(cpu.get("isa") or []) or "?"
    onnxruntime = prov.get("onnxruntime") or (prov.get("packages") or {}).get("onnxruntime")
    return (f"{cpu.get('model', '?')} {cpu.get('machine', '')} [{isa}], {prov.get('threads', '?')} threads; "
            f"torch {prov.get('torch', '?')}, onnxruntime {onnxruntime or '?'}, "
            f"mqbench {prov.get('mqbench', '?')}").replace("  ", " ")


def runtime_version(record: dict[str, Any]) -> str | None:
    """The record's runtime package and version when it is not one :func:`environment` already names
    (``executorch 1.5.1``, ``openvino 2026.4.1``), from the runtime's own report and the installed versions."""
    info = (((record.get("plugins") or {}).get("backend") or {}).get("info") or {})
    name = str(info.get("runtime") or "").split(" ")[0]
    if not name or name in ("onnxruntime", "torch"):
        return None
    version = ((record.get("provenance") or {}).get("packages") or {}).get(name)
    return f"{name} {version or str(info['runtime']).split(' ', 1)[-1]}"


def _split_runtime_versions(rows: list[dict[str, Any]]) -> None:
    """Rows of one table whose runtime shows up in two versions get that version in their environment."""
    versions: dict[tuple[Any, ...], dict[str, set[str]]] = {}
    for row in rows:
        if row["runtime_version"]:
            name = row["runtime_version"].split(" ")[0]
            versions.setdefault(_table_key(row), {}).setdefault(name, set()).add(row["runtime_version"])
    for row in rows:
        if row["runtime_version"]:
            name = row["runtime_version"].split(" ")[0]
            if len(versions[_table_key(row)][name]) > 1:
                row["environment"] += f", {row['runtime_version']}"


def _table_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["dataset"], row["model"], row["weights"], row["environment"])


def _group_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["dataset"], row["model"], row["weights"], row["seed"], row["n_config"], row["environment"])


def _latency_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The latency figures a table shows: median ms at batch 1, images/s at batch 32, with 1 thread and with
    every core, the float model's images/s and the speedup at batch 32 on every core, the model size."""
    lat = record.get("latency") or {}
    cores = lat.get("cores")
    dep, flt = lat.get("deployed") or {}, lat.get("float") or {}

    def get(table: dict[str, Any], batch: int, threads: Any, field: str) -> Any:
        return (table.get(f"batch{batch}_threads{threads}") or {}).get(field)

    return {"lat_b1_t1_ms": get(dep, 1, 1, "median_ms"), "lat_b1_tall_ms": get(dep, 1, cores, "median_ms"),
            "ips_b32_t1": get(dep, 32, 1, "images_per_s"), "ips_b32_tall": get(dep, 32, cores, "images_per_s"),
            "float_ips_b32_tall": get(flt, 32, cores, "images_per_s"),
            "speedup_b32_tall": (lat.get("speedup") or {}).get(f"batch32_threads{cores}"),
            "size_bytes": (lat.get("size_bytes") or {}).get("deployed"), "cores": cores}


def rows_from_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in newest_per_config(records):
        c = r["config"]
        which, acc = _accuracy(r)
        note = ""
        if r["status"] == "failed":
            err = r.get("error") or {}
            note = f"{err.get('type', 'Error')}: {err.get('message', '')}"[:200]
        elif r["status"] == "skipped":
            note = r.get("skip_reason", "")
        float_ops: dict[str, int] = {}
        for shape_info in (r.get("deployment") or {}).values():
            if isinstance(shape_info, dict):
                float_ops.update(shape_info.get("float_compute_ops") or {})
        if float_ops:
            ran_float = "float ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(float_ops.items()))
            note = f"{note}; {ran_float}" if note else ran_float
        row: dict[str, Any] = {
            "suite": r.get("suite"), "dataset": c.get("dataset"), "model": c.get("model"),
            "weights": c.get("weights"), "environment": environment(r), "runtime_version": runtime_version(r),
            "pipeline": c.get("pipeline"),
            "backend": c.get("backend"),
            "scheme": c.get("scheme"), "seed": c.get("seed"), "status": r["status"], "evaluated": which,
            "top1": None, "top1_lo": None, "top1_hi": None, "top5": None, "top5_lo": None, "top5_hi": None,
            "n": None, "delta_top1": None, "p_vs_fp32": None, "p_vs_best": None,
            "best_in_scheme": False, "method_s": _method_seconds(r), "note": note,
            "sim_top1": (((r.get("metrics") or {}).get("sim") or {}).get("accuracy") or {}).get("top1", {}).get("value")
            if which == "deployed" else None,
            "agreement": (r.get("agreement") or {}).get("top1_agreement"),
            "logit_sqnr_db": (r.get("agreement") or {}).get("logit_sqnr_db"),
            "int_sim_top1": ((((r.get("metrics") or {}).get("integer_sim") or {}).get("accuracy") or {}).get("top1")
                             or {}).get("value"),
            "agreement_int_sim": (r.get("agreement_integer_sim") or {}).get("top1_agreement"),
            "record": Path(r.get("_path", "")).name, "n_config": c.get("eval_limit"),
            "calib_n": ((r.get("data") or {}).get("calib") or {}).get("size"),
            "_images": ((r.get("data") or {}).get("eval") or {}).get("fingerprint"), "_outcomes": None,
            "_harness_only": bool(((r.get("plugins") or {}).get("backend") or {}).get("info", {}).get("harness_only")),
            **_latency_fields(r),
        }
        row["note"] = _slower_than_float(row, float_ops)
        if acc:
            row.update(top1=acc["top1"]["value"], top1_lo=acc["top1"]["ci95"][0], top1_hi=acc["top1"]["ci95"][1],
                       top5=acc["top5"]["value"], top5_lo=acc["top5"]["ci95"][0], top5_hi=acc["top5"]["ci95"][1],
                       n=acc["n"])
            if acc.get("top1_outcomes"):
                row["_outcomes"] = unpack_bits(acc["top1_outcomes"], acc["n"])
        rows.append(row)
    _split_runtime_versions(rows)
    refs = {_group_key(r): r for r in rows
            if r["pipeline"] == "fp32" and r["status"] == "ok" and r["top1"] is not None}
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (*_group_key(row), row["scheme"])
        if row["top1"] is not None and not row["_harness_only"] and (key not in best or row["top1"] > best[key]["top1"]):
            best[key] = row
    for row in rows:
        ref = refs.get(_group_key(row))
        if ref is not None and row["top1"] is not None:
            row["delta_top1"] = row["top1"] - ref["top1"]
            if row is not ref:
                row["p_vs_fp32"] = _paired_p(row, ref)
        leader = best.get((*_group_key(row), row["scheme"]))
        if leader is not None and row["top1"] is not None and row["scheme"] != "fp32" and not row["_harness_only"]:
            if leader is row:
                row["best_in_scheme"] = True
            else:
                row["p_vs_best"] = _paired_p(row, leader)
    _against_mqbench_best(rows)
    rows.sort(key=lambda r: (str(r["dataset"]), str(r["model"]), str(r["weights"]), r["environment"],
                             r["pipeline"] != "fp32",
                             str(r["pipeline"]), str(r["scheme"]), str(r["backend"]), r["seed"] or 0))
    for row in rows:
        del row["n_config"], row["_images"], row["_outcomes"], row["_harness_only"]
    return rows


def is_toolkit(pipeline: str | None) -> bool:
    """Whether a row's quantizer is a toolkit recipe (``toolkit:recipe``) rather than an mqbench pipeline."""
    return ":" in str(pipeline or "").partition("(")[0]


def _against_mqbench_best(rows: list[dict[str, Any]]) -> None:
    """Each toolkit row against mqbench's most accurate pipeline on the same model, scheme and runtime: that pipeline
    (``mqbench_best``) and McNemar's p between the two (``p_vs_mqbench_best``)."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        row.update(toolkit_row=is_toolkit(row["pipeline"]), mqbench_best=None, p_vs_mqbench_best=None)
        if row["top1"] is None or row["toolkit_row"] or row["pipeline"] == "fp32" or row["_harness_only"]:
            continue
        key = (*_group_key(row), row["scheme"], row["backend"])
        if key not in best or row["top1"] > best[key]["top1"]:
            best[key] = row
    for row in rows:
        leader = best.get((*_group_key(row), row["scheme"], row["backend"]))
        if row["toolkit_row"] and leader is not None:
            row["mqbench_best"] = leader["pipeline"]
            if row["top1"] is not None:
                row["p_vs_mqbench_best"] = _paired_p(row, leader)


def _slower_than_float(row: dict[str, Any], float_ops: dict[str, int]) -> str:
    """The row's note, with a flag when the quantized model runs slower than the float model on the same runtime
    (speedup below 1 at batch 32 on every core), and the cause where the record shows one."""
    speedup = row["speedup_b32_tall"]
    if speedup is None or speedup >= 1 or row["scheme"] == "fp32":
        return str(row["note"])
    cause = ("operators left in float" if float_ops else
             "every arithmetic operator ran on the runtime's integer kernels: they are slower than its float ones here")
    flag = f"SLOWER THAN FLOAT ({speedup:.2f}x): {cause}"
    return f"{row['note']}; {flag}" if row["note"] else flag


def _method_seconds(record: dict[str, Any]) -> float | None:
    """Wall-clock seconds of the pipeline's own steps (transform, calibrate, refine), from the record's timings; a
    step whose result this cell reused from an earlier cell of its sweep (a training, a calibration, the whole
    QuantSim) counts with what it cost there."""
    timings = dict(record.get("timings_s") or {})
    for reused in ("calibration_reused_in_process", "quantsim_reused_in_process"):
        timings.update((record.get(reused) or {}).get("timings_s") or {})
    steps = [v for k, v in timings.items() if k.startswith(METHOD_STAGES)]
    steps += [float(cost.get("seconds") or 0.0) for cost in (record.get("training") or {}).values()
              if isinstance(cost, dict) and cost.get("reused_in_process")]
    return round(sum(steps), 1) if steps else None


def _seconds(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def _paired_p(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """McNemar p of two rows evaluated on the same images (same fingerprint and count), else None."""
    if a["_outcomes"] is None or b["_outcomes"] is None or a["_images"] != b["_images"] or a["n"] != b["n"]:
        return None
    return mcnemar_p(a["_outcomes"], b["_outcomes"])


def _sig(row: dict[str, Any]) -> str:
    """The delta to fp32 with ``*`` when significant at 95%."""
    text = _delta(row["delta_top1"])
    return text + ("*" if row["p_vs_fp32"] is not None and row["p_vs_fp32"] < ALPHA else "")


def _vs_best(row: dict[str, Any]) -> str:
    """``best`` for a scheme's leader; ``< best`` / ``≈ best`` (with McNemar's p) for the others."""
    if row["best_in_scheme"]:
        return "best"
    p = row["p_vs_best"]
    if p is None:
        return ""
    shown = f"p={p:.2g}" if p > 0 else "p<1e-300"  # below the smallest double: 0 would read as certainty
    return f"< best ({shown})" if p < ALPHA else f"≈ best ({shown})"


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def _ci(row: dict[str, Any], k: str) -> str:
    if row[k] is None:
        return ""
    return f"{_pct(row[k])} [{_pct(row[k + '_lo'])}, {_pct(row[k + '_hi'])}]"


def _delta(v: float | None) -> str:
    return "" if v is None else f"{100 * v:+.2f}"


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((str(r["dataset"]), str(r["model"]), str(r["weights"])), []).append(r)
    return out


def _provenance_line(records: Sequence[dict[str, Any]]) -> str:
    machines = sorted({f"{(r['provenance'].get('cpu') or {}).get('model', '?')} ({r['provenance'].get('threads', '?')} "
                       f"threads), torch {r['provenance'].get('torch', '?')}"
                       for r in newest_per_config(records) if r.get("provenance")})
    if not machines:
        return ""
    flag = "" if len(machines) == 1 else " WARNING: records from several machines or library versions are mixed"
    return f"Measured on: {'; '.join(machines)}.{flag}"


LEGEND = ("`*` after Δ: differs from fp32 at 95% (two-sided exact McNemar test on the same evaluation images). "
          "`≈ best`: not significantly different from the most accurate row of the same model and scheme; "
          "`< best`: significantly worse (p < 0.05). `method s`: wall-clock seconds of the pipeline's transform, "
          "calibrate and refine steps on the recorded machine (evaluation excluded). On a real-kernel backend the "
          "top-1 is the deployed model's; `sim top-1`: the QuantSim's (fake quantization) on the same images; "
          "`agree %`: images whose simulated and deployed top-1 class match; `int-sim agree %`: the same for the "
          "simulation in the runtime's own integer arithmetic, where mqbench models it (ONNX Runtime on x86-64). "
          "`float ops` in the status: operators the runtime ran in float instead of on integer kernels. "
          "`SLOWER THAN FLOAT`: the quantized model's batch-32 throughput on every core is below the float "
          "model's on the same runtime, with the cause where the record shows it.")

LATENCY_LEGEND = ("Latency: median over at least 20 calls and 2 s after warm-up (the record has quartiles); "
                  "`b1 ms`: one image; `b32 img/s`: throughput at batch 32; `1t` one thread, `Nt` every core of "
                  "the machine; `float`: the unquantized model on the same runtime; `speedup`: float / int8 "
                  "median at batch 32 on every core; `MB`: the deployed model's size.")


def _latency_header(group: Sequence[dict[str, Any]]) -> list[str]:
    n = next((r["cores"] for r in group if r["cores"]), "N")
    return ["pipeline", "scheme", "backend", "b1 ms 1t", f"b1 ms {n}t", "b32 img/s 1t", f"b32 img/s {n}t",
            f"float b32 img/s {n}t", "speedup", "MB"]


def _latency_rows(group: Sequence[dict[str, Any]]) -> list[list[str]]:
    def num(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    return [[r["pipeline"], r["scheme"], r["backend"], num(r["lat_b1_t1_ms"], ".2f"), num(r["lat_b1_tall_ms"], ".2f"),
             num(r["ips_b32_t1"], ".0f"), num(r["ips_b32_tall"], ".0f"), num(r["float_ips_b32_tall"], ".0f"),
             num(r["speedup_b32_tall"], ".2f") + ("x" if r["speedup_b32_tall"] is not None else ""),
             num(None if r["size_bytes"] is None else r["size_bytes"] / 1e6, ".2f")]
            for r in group if r["lat_b1_t1_ms"] is not None or r["ips_b32_tall"] is not None]


STATUS_TEXT = {"ok": "", "failed": "FAILED", "skipped": "skipped"}


def render_markdown(loaded: LoadResult, plots: Sequence[str] = ()) -> str:
    """The leaderboard in Markdown; ``plots``: image paths (as the page should link them) shown under the
    error-accumulation table."""
    rows = rows_from_records(loaded.records)
    lines = ["# mqbench leaderboard", ""]
    if not rows:
        lines.append("No records.")
    for (dataset, model, weights), group in _groups(rows).items():
        lines += [f"## {md_cell(model)} ({md_cell(weights)}) on {md_cell(dataset)}", "",
                  "| pipeline | scheme | backend | top-1 % [95% CI] | top-5 % | Δ top-1 vs fp32 | vs scheme's best | n "
                  "| sim top-1 % | agree % | int-sim agree % | method s | status |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in group:
            status = STATUS_TEXT[r["status"]] + (f" ({r['note']})" if r["note"] else "")
            cells = [r["pipeline"], r["scheme"], r["backend"], _ci(r, "top1"), _pct(r["top5"]), _sig(r), _vs_best(r),
                     r["n"] or "", _pct(r["sim_top1"]), _pct(r["agreement"]), _pct(r["agreement_int_sim"]),
                     _seconds(r["method_s"]), status.strip()]
            lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
        lines.append("")
        latency = _latency_rows(group)
        if latency:
            header = _latency_header(group)
            lines += [f"Latency of {md_cell(model)} ({md_cell(weights)}):", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(md_cell(c) for c in cells) + " |" for cells in latency]
            lines.append("")
    errors = layerwise.error_rows(loaded.records)
    if errors:
        lines += ["## Error accumulation", "", "| " + " | ".join(layerwise.ERROR_HEADER) + " |",
                  "|" + "---|" * len(layerwise.ERROR_HEADER)]
        lines += ["| " + " | ".join(md_cell(c) for c in layerwise.error_cells(row)) + " |" for row in errors]
        lines += ["", layerwise.ERROR_LEGEND, ""]
    for link in plots:
        lines += [f"![{md_cell(Path(link).stem)}]({md_link(link)})", ""]
    if rows:
        lines += [LEGEND, ""]
    if any(r["lat_b1_t1_ms"] is not None or r["ips_b32_tall"] is not None for r in rows):
        lines += [LATENCY_LEGEND, ""]
    prov = _provenance_line(loaded.records)
    if prov:
        lines += [md_paragraph(prov), ""]
    for path, problem in loaded.problems:
        lines.append(f"- skipped {md_cell(path.name)}: {md_cell(problem)}")
    return "\n".join(lines).rstrip() + "\n"


def render_csv(loaded: LoadResult) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in rows_from_records(loaded.records):
        writer.writerow(row)
    return buf.getvalue()


def render_json(loaded: LoadResult) -> str:
    return json.dumps({"schema": "mqbench.leaderboard", "schema_version": 1,
                       "rows": rows_from_records(loaded.records),
                       "error_accumulation": layerwise.error_rows(loaded.records),
                       "problems": [{"file": p.name, "problem": why} for p, why in loaded.problems]},
                      indent=1, sort_keys=True) + "\n"


def print_rich(loaded: LoadResult, console: Console) -> None:
    rows = rows_from_records(loaded.records)
    if not rows:
        console.print("No records yet: run `mqbench run --all`.")
    for (dataset, model, weights), group in _groups(rows).items():
        table = Table(title=term(f"{model} ({weights}) on {dataset}"), title_justify="left")
        for col, just in (("pipeline", "left"), ("scheme", "left"), ("backend", "left"), ("top-1 % [95% CI]", "right"),
                          ("top-5 %", "right"), ("Δ vs fp32", "right"), ("vs scheme's best", "left"), ("n", "right"),
                          ("sim top-1 %", "right"), ("agree %", "right"), ("int-sim agree %", "right"),
                          ("method s", "right"), ("status", "left")):
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in group:
            status = STATUS_TEXT[r["status"]] + (f" {r['note']}" if r["note"] else "")
            style = "red" if r["status"] == "failed" else ("dim" if r["status"] == "skipped" else None)
            table.add_row(term(r["pipeline"]), term(r["scheme"]), term(r["backend"]), _ci(r, "top1"), _pct(r["top5"]),
                          _sig(r), _vs_best(r), str(r["n"] or ""), _pct(r["sim_top1"]), _pct(r["agreement"]),
                          _pct(r["agreement_int_sim"]), _seconds(r["method_s"]), term(status.strip()), style=style)
        console.print(table)
        latency = _latency_rows(group)
        if latency:
            lat_table = Table(title=term(f"latency of {model} ({weights})"), title_justify="left")
            for i, col in enumerate(_latency_header(group)):
                lat_table.add_column(col, justify="left" if i < 3 else "right")
            for cells in latency:
                lat_table.add_row(*(term(c) for c in cells))
            console.print(lat_table)
    errors = layerwise.error_rows(loaded.records)
    if errors:
        console.print(layerwise.error_table(errors))
    prov = _provenance_line(loaded.records)
    if prov:
        console.print(term(prov), style="dim")


RENDERERS = {"md": render_markdown, "csv": render_csv, "json": render_json}
