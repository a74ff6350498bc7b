"""What a cell costs, before and after: the same cells run by a baseline revision and by this checkout, side by side
in one run, each in a fresh results folder, with the figures compared.

    python scripts/bench_cells.py --baseline a6bfbc7            # about 25 minutes on 2 cores
    python scripts/bench_cells.py --baseline a6bfbc7 --only ort-qdq

The baseline is checked out with ``git worktree`` into a temporary folder and run as ``python -m mqbench`` with that
folder first on ``PYTHONPATH`` (same virtual environment, same data, same machine). The cases, alternating baseline
and current so that a slow spell of the machine hits both:

* ``ort-qdq``: MobileNetV2 (tf2ptq) minmax W8A8 per channel on ort-qdq: 512 calibration and 1300 evaluation images,
  integer simulation and latency included (issue 25's target cell);
* ``simulated``: the same cell on the ``simulated`` runtime;
* ``fp32``: the float model on ``simulated`` (what the fake-quant evaluation is compared with);
* ``quick-cold``: ``mqbench run --all`` with an empty cache (nothing decoded or trained before);
* ``adaround``: MobileNetV2 (tf2ptq) W4A8 per channel, ``mse`` and ``mse+adaround`` on a budget (60 steps per layer on
  64 images; the real-data test's two cells), 512 calibration and the first 300 evaluation images, on ``simulated``.

ImageNet cases share one decoded-data cache, filled before timing; ``quick-cold`` gets an empty cache each time.
Per case: wall seconds of the command, the record's stage timings, and per evaluation (sim, integer sim, deployed)
on how many images the per-image top-1 outcome differs between the two revisions. Writes
``results/bench/cells-<date>-<baseline>-<commit>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGENET_CELL = ["run", "--suite", "imagenet", "--model", "mobilenet_v2:tf2ptq", "--scheme", "w8a8-pc"]
CASES: dict[str, list[str]] = {
    "ort-qdq": [*IMAGENET_CELL, "--method", "minmax", "--backend", "ort-qdq"],
    "simulated": [*IMAGENET_CELL, "--method", "minmax", "--backend", "simulated"],
    "fp32": ["run", "--suite", "imagenet", "--model", "mobilenet_v2:tf2ptq", "--method", "fp32",
             "--backend", "simulated"],
    "quick-cold": ["run", "--all"],
    "adaround": ["run", "--suite", "imagenet", "--model", "mobilenet_v2:tf2ptq", "--scheme", "w4a8-pc", "--method", "mse",
                 "--method", "mse+adaround(iterations=60,images=64)", "--limit", "300", "--backend", "simulated"],
}


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def run_case(tree: Path, argv: list[str], results: Path, cache: Path) -> dict[str, Any]:
    from mqbench.data.paths import DATA_ENV, data_dir

    data = data_dir()  # this checkout's data folder (../shared/data): the baseline's worktree is elsewhere
    env = {**os.environ, "PYTHONPATH": str(tree), "MQBENCH_CACHE": str(cache), **({DATA_ENV: str(data)} if data else {})}
    env.pop("MQBENCH_RESULTS", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mqbench", *argv, "--results", str(results), "--quiet"], env=env,
                          cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree.name}: mqbench {' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    records = [json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))]
    return {"wall_s": round(wall, 1), "records": records}


def outcomes(records: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per cell (config hash): the per-image top-1 outcomes of each evaluation."""
    return {r["config_hash"]: {k: v["accuracy"]["top1_outcomes"] for k, v in r.get("metrics", {}).items()}
            for r in records}


def differing_images(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, int | None]:
    """Per evaluation (sim, integer_sim, deployed): on how many images the per-image top-1 outcome differs between
    the two revisions' records of the same cells (None: an evaluation or cell only one of them has)."""
    oa, ob = outcomes(a), outcomes(b)
    names = sorted({name for cell in [*oa.values(), *ob.values()] for name in cell})
    out: dict[str, int | None] = {}
    for name in names:
        pairs = [(oa[h].get(name), ob.get(h, {}).get(name)) for h in oa]
        if any(x is None or y is None for x, y in pairs) or set(oa) != set(ob):
            out[name] = None
            continue
        out[name] = sum(bin(int(x, 16) ^ int(y, 16)).count("1") for x, y in pairs if x)
    return out


def summary(result: dict[str, Any]) -> dict[str, Any]:
    timings: dict[str, float] = {}
    for record in result["records"]:
        for stage, seconds in record.get("timings_s", {}).items():
            timings[stage] = round(timings.get(stage, 0.0) + seconds, 2)
    return {"wall_s": result["wall_s"], "cells": len(result["records"]), "timings_s": timings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with (e.g. a6bfbc7)")
    parser.add_argument("--only", action="append", choices=sorted(CASES), help="run only these cases (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = parser.parse_args()
    base_rev, head_rev = git("rev-parse", "--short", args.baseline), git("rev-parse", "--short", "HEAD")
    work = Path(tempfile.mkdtemp(prefix="mqbench-bench-"))
    base_tree = work / f"baseline-{base_rev}"
    git("worktree", "add", "--detach", str(base_tree), base_rev)
    trees = {"baseline": base_tree, "current": ROOT}
    data_cache = work / "data-cache"
    try:
        # Decode the ImageNet splits once (both revisions read the same decoded cache), outside the timings.
        run_case(ROOT, [*CASES["fp32"], "--limit", "1", "--no-latency"], work / "warm", data_cache)
        report: dict[str, Any] = {"baseline": base_rev, "current": head_rev, "dirty": bool(git("status", "--porcelain")),
                                  "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                  "machine": machine(), "cases": {}}
        for name in args.only or list(CASES):
            runs = {}
            for which, tree in trees.items():
                cache = work / f"cold-{which}" if name == "quick-cold" else data_cache
                print(f"{name}: {which} ...", flush=True)
                runs[which] = run_case(tree, CASES[name], work / f"results-{name}-{which}", cache)
            base, cur = summary(runs["baseline"]), summary(runs["current"])
            report["cases"][name] = {
                "command": "mqbench " + " ".join(CASES[name]), "baseline": base, "current": cur,
                "speedup": round(base["wall_s"] / cur["wall_s"], 2),
                "same_outcomes": outcomes(runs["baseline"]["records"]) == outcomes(runs["current"]["records"]),
                "differing_images": differing_images(runs["baseline"]["records"], runs["current"]["records"])}
            print(json.dumps(report["cases"][name]), flush=True)
    finally:
        git("worktree", "remove", "--force", str(base_tree))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cells-{report['date'][:10]}-{base_rev}-{head_rev}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"written: {path}")
    return 0


def machine() -> dict[str, Any]:
    from mqbench import provenance

    collected = provenance.collect()
    return {"cpu": collected["cpu"], "threads": collected["threads"], "torch": collected["torch"],
            "onnxruntime": collected["onnxruntime"], "python": collected["python"]}


def table(report: dict[str, Any]) -> str:
    lines = [f"| case | baseline {report['baseline']} (s) | current {report['current']} (s) | speedup | "
             "images whose top-1 outcome differs |", "|---|---|---|---|---|"]
    for name, case in report["cases"].items():
        differ = ", ".join(f"{k} {v}" for k, v in case.get("differing_images", {}).items())
        lines.append(f"| {name} | {case['baseline']['wall_s']} | {case['current']['wall_s']} | {case['speedup']}x | "
                     f"{differ or ('none' if case['same_outcomes'] else 'some')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
