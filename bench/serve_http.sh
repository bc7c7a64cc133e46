#!/usr/bin/env bash
# GetUserTier over gRPC and over the HTTP/JSON API (`GET /v1/users/ID`) from ONE server process
# (bench/serve_http.sh): h2load at 16 in flight over 16 connections (HTTP/2 for gRPC, HTTP/1.1
# keep-alive for JSON: --h1), alternating grpc / json, ROUNDS rounds of SECS seconds; prints
# req/s, successes and p99 per run.
# serve_http.sh BIN MODELS_DIR USER_ID [ROUNDS] [SECS]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=$1; MODELS=$2; UID_=$3; ROUNDS=${4:-3}; SECS=${5:-5}
W=$(mktemp -d)
PID=
trap '[ -n "$PID" ] && kill -TERM $PID 2>/dev/null; rm -rf "$W"' EXIT
grpc_body "$W/body" "$UID_"
GRPC=$(free_port); HTTP=$(free_port)
"$BIN" serve --models "$MODELS" --listen 127.0.0.1:$GRPC --http-listen 127.0.0.1:$HTTP --state "$W/state" \
  --now 2026-11-02T00:00:00Z > "$W/log" 2>&1 &
PID=$!
for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$HTTP/v1/users/$UID_" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$HTTP/v1/users/$UID_" || { echo "the JSON lookup never answered 200" >&2; cat "$W/log" >&2; exit 1; }
run() { # grpc|json
  local figures
  if [ "$1" = grpc ]; then
    figures=$(h2load_run "$W/lat" h2load -c 16 -m 1 -t 1 -D "$SECS" --warm-up-time 1 -H 'content-type: application/grpc' \
      -H 'te: trailers' -d "$W/body" http://127.0.0.1:$GRPC/tiering.v1.Tiering/GetUserTier)
  else
    figures=$(h2load_run "$W/lat" h2load --h1 -c 16 -m 1 -t 1 -D "$SECS" --warm-up-time 1 "http://127.0.0.1:$HTTP/v1/users/$UID_")
  fi
  echo "$1 $figures load=$(cut -d' ' -f1 /proc/loadavg)"
}
for _ in $(seq "$ROUNDS"); do run grpc; run json; done
