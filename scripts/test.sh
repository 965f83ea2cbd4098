#!/usr/bin/env bash
# Builds and runs every test three times: a plain build, under AddressSanitizer
# and UndefinedBehaviorSanitizer, and the threaded tests under
# ThreadSanitizer. Prints one closing line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}

passed=0
failed=0
status=0

# Throwaway servers on loopback, stopped however this script ends.
SERVERS_DIR=$(mktemp -d /tmp/pac-test-servers.XXXXXX)
chmod 755 "$SERVERS_DIR"
cleanup() {
  bash scripts/pg-test-server.sh stop "$SERVERS_DIR/pg" >/dev/null 2>&1 || true
  for e in single cluster secure; do
    bash scripts/etcd-test-server.sh stop "$SERVERS_DIR/etcd-$e" >/dev/null 2>&1 || true
  done
  rm -rf "$SERVERS_DIR"
}
# A fresh 3-node etcd cluster for each suite: its test kills a member.
restart_etcd_cluster() {
  bash scripts/etcd-test-server.sh stop "$SERVERS_DIR/etcd-cluster" >/dev/null 2>&1 || true
  if bash scripts/etcd-test-server.sh cluster "$SERVERS_DIR/etcd-cluster"; then
    # shellcheck disable=SC1091
    source "$SERVERS_DIR/etcd-cluster/env"
  else
    echo "=== could not start the etcd cluster: its test will fail"
  fi
}
trap cleanup EXIT
echo "=== starting PostgreSQL 15 on 127.0.0.1"
if ! bash scripts/pg-test-server.sh start "$SERVERS_DIR/pg"; then
  echo "=== could not start PostgreSQL: its tests will fail"
  cat "$SERVERS_DIR/pg/initdb.log" "$SERVERS_DIR/pg/server.log" 2>/dev/null | tail -30
else
  # shellcheck disable=SC1091
  source "$SERVERS_DIR/pg/env"
  echo "=== PostgreSQL listening on 127.0.0.1:${PAC_TEST_PG_PORT}"
fi
echo "=== starting etcd 3.4: a single node and a TLS + client-certificate + auth node"
for e in single secure; do
  if bash scripts/etcd-test-server.sh "$e" "$SERVERS_DIR/etcd-$e"; then
    # shellcheck disable=SC1091
    source "$SERVERS_DIR/etcd-$e/env"
  else
    echo "=== could not start etcd ($e): its tests will fail"
    tail -20 "$SERVERS_DIR/etcd-$e"/*.log 2>/dev/null
  fi
done

# run_suite NAME BUILD_DIR CMAKE_ARGS CTEST_ARGS [TARGET]
run_suite() {
  local name=$1 dir=$2 cmake_args=$3 ctest_args=$4 target=${5:-all}
  echo "=== ${name}: configure and build (${dir}, target ${target})"
  # shellcheck disable=SC2086
  if ! cmake -S . -B "$dir" $cmake_args >/dev/null ||
     ! cmake --build "$dir" -j"$JOBS" --target "$target" >"$dir/build.log" 2>&1; then
    tail -50 "$dir/build.log" 2>/dev/null
    echo "=== ${name}: BUILD FAILED"
    failed=$((failed + 1))
    status=1
    return
  fi
  echo "=== ${name}: ctest ${ctest_args}"
  local log
  log=$(mktemp)
  # shellcheck disable=SC2086
  (cd "$dir" && ctest $ctest_args) 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  # Count the individual GoogleTest cases, not just the binaries.
  local p f
  p=$(grep -cE '^([0-9]+: )?\[       OK \]' "$log" || true)
  f=$(grep -cE '^([0-9]+: )?\[  FAILED  \] .*\(' "$log" || true)
  passed=$((passed + p))
  failed=$((failed + f))
  if [ "$rc" -ne 0 ]; then
    status=1
    [ "$f" -eq 0 ] && failed=$((failed + 1))
  fi
  rm -f "$log"
}

# ctest runs the gtest binaries with verbose output so the cases are counted.
CTEST_COMMON="-V"

restart_etcd_cluster
run_suite "plain" build "-DCMAKE_BUILD_TYPE=RelWithDebInfo" "$CTEST_COMMON"
# Clang's thread-safety analysis over the library sources (PAC_GUARDED_BY),
# after the plain build has generated the etcd protobuf headers.
echo "=== thread-safety analysis (clang -Wthread-safety)"
# Each source alone (the builds batch them), so a missing #include fails here.
tsa_flags="-std=c++20 -fsyntax-only -Wthread-safety -Werror=thread-safety -Iinclude -I. -Ibuild/generated $(pkg-config --cflags libpq cpp-httplib)"
export tsa_flags
if ! git ls-files 'src/*.cc' | grep -v '_test\.cc$' |
     xargs -P "$JOBS" -I{} sh -c 'clang++ $tsa_flags "$1"' _ {}; then
  echo "=== thread-safety analysis: FAILED"
  failed=$((failed + 1))
  status=1
else
  echo "=== thread-safety analysis: clean"
fi

# The Go client's tests (clients/go) against the binary just built, on
# memory, PostgreSQL and etcd, under the Go race detector. GOPROXY=off: the
# module has no dependencies and nothing is downloaded.
echo "=== Go client: go test -race ./... (clients/go)"
go_log=$(mktemp)
(cd clients/go && CI=true PAC_BINARY="$PWD/../../build/pac-concurrency" \
   GOPROXY=off GOSUMDB=off GOFLAGS=-mod=readonly \
   go test -race -count=1 -v ./...) 2>&1 | tee "$go_log" |
  grep -E '^\s*--- (PASS|FAIL)|^(ok|FAIL|panic)'
go_rc=${PIPESTATUS[0]}
p=$(grep -cE '^\s*--- PASS' "$go_log" || true)
f=$(grep -cE '^\s*--- FAIL' "$go_log" || true)
passed=$((passed + p))
failed=$((failed + f))
if [ "$go_rc" -ne 0 ]; then
  tail -80 "$go_log"
  status=1
  [ "$f" -eq 0 ] && failed=$((failed + 1))
fi
rm -f "$go_log"
unformatted=$(cd clients/go && gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "=== Go client: not gofmt-formatted: $unformatted"
  failed=$((failed + 1))
  status=1
fi

restart_etcd_cluster
# The sanitizer builds keep line tables only (-g1): their reports name
# files and lines, and the builds take less time.
run_suite "asan+ubsan" build-asan \
  "-DCMAKE_BUILD_TYPE=Debug -DPAC_LINE_TABLES_ONLY=ON -DPAC_SANITIZE=address;undefined -DPAC_BUILD_BENCH=OFF -DPAC_BUILD_EXAMPLES=OFF" \
  "$CTEST_COMMON"
# TSan needs the low-entropy address layout that gcc 12's runtime expects.
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
run_suite "tsan" build-tsan \
  "-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPAC_LINE_TABLES_ONLY=ON -DPAC_SANITIZE=thread -DPAC_BUILD_BENCH=OFF -DPAC_BUILD_EXAMPLES=OFF" \
  "$CTEST_COMMON -L threaded" threaded_tests

# Every test docs/contract.md names exists (and the check catches one that
# does not).
echo "=== contract: the tests docs/contract.md names exist"
bogus=$(mktemp)
printf 'names `DriverConformanceTest.Rule00_NoSuchTest`\n' >"$bogus"
if bash scripts/check-contract.sh && ! bash scripts/check-contract.sh "$bogus" >/dev/null; then
  passed=$((passed + 1))
else
  echo "=== contract check: FAILED"
  failed=$((failed + 1))
  status=1
fi
rm -f "$bogus"

# The fuzz targets, briefly (make fuzz runs them for longer).
echo "=== fuzz targets, ${PAC_FUZZ_SECONDS:-10}s each"
if bash scripts/fuzz.sh "${PAC_FUZZ_SECONDS:-10}"; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
  status=1
fi

echo
echo "tests: ${passed} passed, ${failed} failed"
exit $status
