#!/usr/bin/env bash
# Runs the benchmarks and writes their JSON next to the build. The numbers and
# the method are recorded in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT="$BUILD/bench-results"
mkdir -p "$OUT"
echo "=== memory driver vs. mutex-protected map floors"
"$BUILD/bench/memory_bench" \
  --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_out="$OUT/memory_bench.json" --benchmark_out_format=json
python3 scripts/bench_ratios.py "$OUT/memory_bench.json"
