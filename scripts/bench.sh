#!/usr/bin/env bash
# The benchmarks in tests/benchmarks with a history: each run is saved under results/bench/history/<machine>/ (pytest-
# benchmark's autosave: timings, machine info, commit) and compared with the last run saved for this machine; the run
# fails when a benchmark's minimum time regressed by more than MQBENCH_BENCH_THRESHOLD (default 25%: this 2-core
# machine's run-to-run spread of the minimum is up to about 10%).
#
#   bash scripts/bench.sh                       # all benchmarks (about 30 s here)
#   bash scripts/bench.sh -k forward            # a subset (pytest arguments pass through)
#   MQBENCH_BENCH_THRESHOLD=10% bash scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
threshold="${MQBENCH_BENCH_THRESHOLD:-25%}"
storage="results/bench/history"
args=(tests/benchmarks --benchmark-only --benchmark-storage="file://$storage" --benchmark-autosave
      --benchmark-columns=min,median,iqr,rounds --benchmark-sort=name)
if compgen -G "$storage/*/*.json" >/dev/null; then
    args+=(--benchmark-compare --benchmark-compare-fail="min:$threshold")
fi
exec python -m pytest "${args[@]}" "$@"
