#!/usr/bin/env bash
# The benchmarks in tests/benchmarks with a history: each run is saved under results/bench/history/<machine>/ (pytest-
# benchmark's autosave: timings, machine info, commit), shown beside the last run saved for this machine, and
# compared with it by scripts/bench_compare.py: the run fails when a benchmark's minimum time, divided by the
# machine's own drift (test_machine_reference, torch and Python only), regressed by more than MQBENCH_BENCH_THRESHOLD
# percent (default 25: unchanged code measured up to 50% slower on this shared 2-core machine five hours apart, which
# the uncorrected comparison read as regressions).
#
#   bash scripts/bench.sh                       # all benchmarks (about 35 s here)
#   bash scripts/bench.sh -k forward            # a subset (pytest arguments pass through)
#   MQBENCH_BENCH_THRESHOLD=10 bash scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
threshold="${MQBENCH_BENCH_THRESHOLD:-25}"
storage="results/bench/history"
args=(tests/benchmarks --benchmark-only --benchmark-storage="file://$storage" --benchmark-autosave
      --benchmark-columns=min,median,iqr,rounds --benchmark-sort=name)
if compgen -G "$storage/*/*.json" >/dev/null; then
    args+=(--benchmark-compare)
fi
python -m pytest "${args[@]}" "$@"
exec python scripts/bench_compare.py --history "$storage" --threshold "${threshold%\%}"
