"""Time the quick suite run in-process against the same sweep run through Ray (issue: Ray executor).

Each run is the real CLI in a fresh results directory:

    mqbench run --suite quick --quiet --results TMP [--executor ray [--address ADDR]]

Modes: ``local`` (in-process executor), ``ray`` (a local Ray instance started and stopped by the run itself,
2 workers of 1 CPU), ``ray-cluster`` (a Ray head with 2 CPUs started once by this script with ``ray start``,
joined with ``--address``: the cost of a sweep on a cluster that is already up). ``--cold`` gives every run
an empty weights cache, so the quick models are trained first (what a fresh checkout does); otherwise the
cache is filled once before timing.

    python scripts/ray_vs_local.py --repeat 3            # warm cache
    python scripts/ray_vs_local.py --repeat 1 --cold     # training included
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT = 6399


def run_once(mode: str, cache: Path, results: Path) -> float:
    cmd = [sys.executable, "-m", "mqbench", "run", "--suite", "quick", "--quiet", "--results", str(results)]
    if mode == "ray":
        cmd += ["--executor", "ray"]
    elif mode == "ray-cluster":
        cmd += ["--executor", "ray", "--address", f"127.0.0.1:{PORT}"]
    env = {**os.environ, "MQBENCH_CACHE": str(cache)}
    if mode == "ray-cluster":  # `ray start` enables token authentication; its token is in ~/.ray/auth_token
        env["RAY_AUTH_MODE"] = "token"
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (default 3)")
    parser.add_argument("--cold", action="store_true", help="an empty weights cache for every run (trains the models)")
    parser.add_argument("--modes", default="local,ray,ray-cluster", help="comma-separated modes to time")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    work = Path(tempfile.mkdtemp(prefix="mqbench-ray-timing-"))
    shared_cache = work / "cache"
    if not args.cold:
        print("filling the weights cache (not timed) ...", file=sys.stderr)
        run_once("local", shared_cache, work / "warmup")
    if "ray-cluster" in modes:
        subprocess.run(["ray", "start", "--head", f"--port={PORT}", "--num-cpus=2", "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, capture_output=True,
                       env={**os.environ, "MQBENCH_CACHE": str(shared_cache)})
    times: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for rep in range(args.repeat):
            for mode in modes:  # interleaved, so a drift of the machine touches every mode alike
                cache = work / f"cache-{mode}-{rep}" if args.cold else shared_cache
                t = run_once(mode, cache, work / f"results-{mode}-{rep}")
                times[mode].append(t)
                print(f"{mode} run {rep + 1}: {t:.1f} s", file=sys.stderr)
    finally:
        if "ray-cluster" in modes:
            subprocess.run(["ray", "stop", "--force"], capture_output=True)
    base = statistics.median(times["local"]) if times.get("local") else None
    print(f"quick suite, {'cold cache (training included)' if args.cold else 'warm cache'}, "
          f"{args.repeat} run(s) per mode, {os.cpu_count()} CPUs")
    print("| mode | median s | runs s | ratio to local |")
    print("|---|---|---|---|")
    for mode, ts in times.items():
        ratio = f"{statistics.median(ts) / base:.2f}" if base else "n/a"
        print(f"| {mode} | {statistics.median(ts):.1f} | {', '.join(f'{t:.1f}' for t in ts)} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
