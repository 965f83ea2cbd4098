#!/usr/bin/env bash
# `make run`: starts `pac-concurrency serve` on the memory driver (or the
# driver of $PAC_RUN_CONFIG) and prints how to use it. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
LISTEN=${PAC_LISTEN:-127.0.0.1:8080}
BIN="./$BUILD/pac-concurrency"
URL="http://$LISTEN"
cat <<EOT
pac-concurrency: starting the server on $URL (memory driver unless PAC_RUN_CONFIG is set).
Try, from another terminal:

  curl -s -X PUT $URL/v1/repositories/demo/app -d '{"concurrency_limit": 1}'
  curl -s -X POST $URL/v1/repositories/demo/app/runs -d '{"pipeline_run": "demo/pr-1"}'   # acquired
  curl -s -X POST $URL/v1/repositories/demo/app/runs -d '{"pipeline_run": "demo/pr-2"}'   # queued, position 1
  curl -s $URL/v1/repositories/demo/app                                                   # running + queued
  curl -sN $URL/v1/repositories/demo/app/watch &                                          # live events
  curl -s -X DELETE $URL/v1/repositories/demo/app/runs/demo/pr-1                          # admits demo/pr-2
  curl -s $URL/metrics | grep ^pac_

  $BIN --server $URL status
  $BIN --server $URL run --repo demo/app --run demo/pr-3 -- sleep 5

API: docs/api.md. Stop the server with Ctrl-C.
EOT
args=(serve --listen "$LISTEN")
if [ -n "${PAC_RUN_CONFIG:-}" ]; then args=(--config "$PAC_RUN_CONFIG" "${args[@]}"); fi
exec "$BIN" "${args[@]}"
