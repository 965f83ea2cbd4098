#!/usr/bin/env bash
# Runs pac-torture (docs/testing.md).
#
#   scripts/torture.sh short BACKEND [BINARY]  # CI: seed 1, then a random
#                                             # seed (printed), 10 s each
#   scripts/torture.sh long [BINARY]          # make torture: every backend,
#                                             # TORTURE_SECONDS (400) each
#
# PostgreSQL: `short` needs the environment of scripts/pg-test-server.sh
# start DIR; `long` starts a throwaway server when none is set. etcd runs a
# node of the torture's own. A run that finds a violation
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
    echo "=== pac-torture --backend $backend --seconds 10 --seed $seed"
    "$bin" --backend "$backend" --seconds 10 --seed "$seed"
  done
  ;;
long)
  bin=${2:-build/pac-torture}
  seconds=${TORTURE_SECONDS:-400}
  if [ -z "${PAC_TEST_PG_PORT:-}" ]; then
    servers=$(mktemp -d /tmp/pac-torture-servers.XXXXXX)
    chmod 755 "$servers"
    trap 'bash scripts/pg-test-server.sh stop "$servers/pg" >/dev/null 2>&1 || true; rm -rf "$servers"' EXIT
    bash scripts/pg-test-server.sh start "$servers/pg"
    # shellcheck disable=SC1091
    source "$servers/pg/env"
  fi
  for backend in memory postgresql etcd; do
    echo "=== pac-torture --backend $backend --seconds $seconds"
    "$bin" --backend "$backend" --seconds "$seconds"
  done
  ;;
*)
  echo "usage: torture.sh short BACKEND [BINARY] | long [BINARY]" >&2
  exit 2
  ;;
esac
