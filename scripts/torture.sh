#!/usr/bin/env bash
# Runs pac-torture (docs/testing.md).
#
#   scripts/torture.sh short BACKEND [BINARY]  # CI: seed 1, then a random
#                                             # seed (printed) with the
#                                             # queue policies on
#                                             # (PostgreSQL and etcd:
#                                             # --mixed too), 10 s each
#   scripts/torture.sh long [BINARY]          # make torture: every backend
#                                             # (PostgreSQL and etcd mixed,
#                                             # the policies on) until >= 100,000 calls and
#                                             # >= 50 faults of each kind
#
# `long` runs memory 300 s, PostgreSQL and etcd 900 s each (TORTURE_SECONDS
# sets all three) and fails if a run falls short of those counts.
# PostgreSQL: `short` needs the environment of scripts/pg-test-server.sh
# start DIR; `long` starts a throwaway server when none is set. etcd runs a
# 3-member cluster of the torture's own. A run that finds a violation
# prints it with its window of history and how to replay it, and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: torture.sh short BACKEND [BINARY] | long [BINARY]}
case "$mode" in
short)
  backend=${2:?usage: torture.sh short BACKEND [BINARY]}
  bin=${3:-build/pac-torture}
  random_seed=$(( (RANDOM << 15 | RANDOM) % 1000000 + 2 ))
  for seed in 1 "$random_seed"; do
    mixed=()
    if [ "$seed" != 1 ]; then mixed=(--policies); fi
    if [ "$seed" != 1 ] && [ "$backend" != memory ]; then mixed+=(--mixed); fi
    echo "=== pac-torture --backend $backend --seconds 10 --seed $seed ${mixed[*]:-}"
    "$bin" --backend "$backend" --seconds 10 --seed "$seed" "${mixed[@]}"
  done
  ;;
long)
  bin=${2:-build/pac-torture}
  if [ -z "${PAC_TEST_PG_PORT:-}" ]; then
    servers=$(mktemp -d /tmp/pac-torture-servers.XXXXXX)
    chmod 755 "$servers"
    trap 'bash scripts/pg-test-server.sh stop "$servers/pg" >/dev/null 2>&1 || true; rm -rf "$servers"' EXIT
    bash scripts/pg-test-server.sh start "$servers/pg"
    # shellcheck disable=SC1091
    source "$servers/pg/env"
  fi
  status=0
  for run in memory:300 postgresql:900:--mixed etcd:900:--mixed; do
    IFS=: read -r backend seconds mixed <<<"$run"
    seconds=${TORTURE_SECONDS:-$seconds}
    echo "=== pac-torture --backend $backend --seconds $seconds $mixed --policies"
    "$bin" --backend "$backend" --seconds "$seconds" $mixed --policies \
      --expect-calls 100000 --expect-faults 50 || status=$?
  done
  exit "$status"
  ;;
*)
  echo "usage: torture.sh short BACKEND [BINARY] | long [BINARY]" >&2
  exit 2
  ;;
esac
