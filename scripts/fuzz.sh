#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan) and runs each for a
# bounded time on a copy of its seed corpus (fuzz/corpus/<target>/).
#   scripts/fuzz.sh [seconds per target, default 300]
# Fails on any crash, leak, timeout or sanitizer report; the input that
# caused it is left in the printed directory. Prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-300}
BUILD=${FUZZ_BUILD:-build-fuzz}
JOBS=${JOBS:-$(nproc)}
TARGETS=(http_fuzz json_body_fuzz manifest_fuzz import_fuzz config_fuzz key_fuzz)

echo "=== fuzz: configure and build (${BUILD}, clang)"
if ! CC=clang CXX=clang++ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug \
       -DPAC_SANITIZE="fuzzer-no-link;address;undefined" -DPAC_BUILD_FUZZ=ON \
       -DPAC_BUILD_TESTS=OFF -DPAC_BUILD_BENCH=OFF -DPAC_BUILD_EXAMPLES=OFF \
       >/dev/null ||
   ! cmake --build "$BUILD" -j"$JOBS" --target fuzz_all >"$BUILD.log" 2>&1; then
  tail -50 "$BUILD.log" 2>/dev/null
  echo "fuzz: 0 passed, 1 failed"
  exit 1
fi

WORK=$(mktemp -d /tmp/pac-fuzz.XXXXXX)
passed=0
failed=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t/corpus" "$WORK/$t/artifacts"
  echo "=== fuzz: $t for ${SECONDS_PER_TARGET}s"
  # New inputs go to the copy; the committed seeds are read, not written.
  if "$BUILD/fuzz/$t" -max_total_time="$SECONDS_PER_TARGET" -timeout=15 \
       -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
       -artifact_prefix="$WORK/$t/artifacts/" \
       "$WORK/$t/corpus" "fuzz/corpus/$t" >"$WORK/$t/log" 2>&1; then
    passed=$((passed + 1))
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$WORK/$t/log" |
      tr '\n' ' '
    echo
  else
    failed=$((failed + 1))
    tail -60 "$WORK/$t/log"
    echo "=== fuzz: $t FAILED; the input is in $WORK/$t/artifacts/"
  fi
done
echo "fuzz: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
