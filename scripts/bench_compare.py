"""Compare the newest saved benchmark run of this machine with the one before it, corrected for the machine's drift.

    python scripts/bench_compare.py                      # results/bench/history/<machine>/, threshold 25%
    python scripts/bench_compare.py --threshold 10

pytest-benchmark's own comparison reads a run-to-run change of the machine (a shared 2-core machine's load) as a
regression: on 2026-12-03 unchanged code (the float forward pass, rendering 500 records) measured 40-50% slower than
five hours before. Both runs carry ``test_machine_reference`` (torch and plain Python only, never changed), so each
benchmark's change in minimum time is divided by that reference's: ``corrected = (now / before) / (ref_now /
ref_before)``. Exit 1 when a benchmark's corrected change exceeds the threshold; a run without the reference is
compared uncorrected, and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "test_machine_reference"


def minima(path: Path) -> dict[str, float]:
    return {b["name"]: float(b["stats"]["min"]) for b in json.loads(path.read_text())["benchmarks"]}


def compare(before: dict[str, float], now: dict[str, float]) -> tuple[float | None, dict[str, float]]:
    """The machine's drift (None without the reference in both runs) and each common benchmark's corrected ratio."""
    drift = now[REFERENCE] / before[REFERENCE] if REFERENCE in before and REFERENCE in now else None
    return drift, {name: now[name] / before[name] / (drift or 1.0)
                   for name in sorted(set(before) & set(now) - {REFERENCE})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=Path, default=ROOT / "results" / "bench" / "history")
    parser.add_argument("--threshold", type=float, default=25.0, help="percent (default 25)")
    args = parser.parse_args()
    runs = list(args.history.glob("*/*.json"))
    newest = max(runs, key=lambda p: p.stat().st_mtime) if runs else None  # the run just saved: this machine's folder
    mine = sorted(newest.parent.glob("*.json")) if newest else []
    if len(mine) < 2:
        print(f"bench_compare: fewer than two saved runs under {args.history}: nothing to compare")
        return 0
    before_path, now_path = mine[-2], mine[-1]
    drift, ratios = compare(minima(before_path), minima(now_path))
    print(f"{now_path.name} against {before_path.name}")
    print(f"machine drift ({REFERENCE}): " + (f"{drift:.2f}x" if drift else "not in both runs: uncorrected"))
    worst = []
    for name, ratio in ratios.items():
        flag = ratio > 1 + args.threshold / 100
        worst += [name] if flag else []
        print(f"  {ratio:6.2f}x  {name}{'  REGRESSED' if flag else ''}")
    if worst:
        print(f"bench_compare: {len(worst)} benchmark(s) slower by more than {args.threshold:g}% after the drift "
              f"correction: {', '.join(worst)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
