#!/usr/bin/env bash
# A/B (bench/serve_ab.sh): GetUserTier requests/s and p99 of two tiering binaries on one bundle, alternating runs.
# serve_ab.sh OLD_BIN NEW_BIN MODELS_DIR ROUNDS SECS [NEW_MODELS_DIR]
# NEW_MODELS_DIR (default MODELS_DIR): the new binary's bundle, when the two binaries write
# different bundle formats (train the same data with each binary; an old binary refuses a
# newer format, and a new binary reading an old bundle answers without what the old lacks).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
OLD=$1; NEW=$2; MODELS=$3; ROUNDS=${4:-3}; SECS=${5:-5}; NEW_MODELS=${6:-$3}
W=$(mktemp -d)
grpc_body "$W/body" u0000002
run() { # bin tag models
  local port; port=$(free_port)
  rm -rf "$W/state-$2"
  "$1" serve --models "$3" --listen 127.0.0.1:$port --state "$W/state-$2" --now 2026-11-02T00:00:00Z > "$W/log-$2" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do "$1" user u0000002 --server http://127.0.0.1:$port >/dev/null 2>&1 && break; sleep 0.1; done
  local rss; rss=$(awk '/VmRSS/{printf "%.0f", $2/1024}' /proc/$pid/status)
  local figures; figures=$(h2load_run "$W/lat-$2" h2load -c 16 -m 1 -t 1 -D "$SECS" --warm-up-time 1 -H 'content-type: application/grpc' -H 'te: trailers' -d "$W/body" http://127.0.0.1:$port/tiering.v1.Tiering/GetUserTier)
  kill -TERM $pid; wait $pid 2>/dev/null || true
  echo "$2 $figures rss_after_load_mb=$rss load=$(cut -d' ' -f1 /proc/loadavg)"
}
for r in $(seq "$ROUNDS"); do run "$OLD" old "$MODELS"; run "$NEW" new "$NEW_MODELS"; done
rm -rf "$W"
