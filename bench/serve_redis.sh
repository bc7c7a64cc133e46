#!/usr/bin/env bash
# Redis state against the embedded state, measured from outside the server (bench/serve_redis.sh):
# one tiering binary and one bundle served twice at once, by an embedded server (its own state
# directory) and by a replica on a fresh redis-server (seeded from the same bundle), both on
# 127.0.0.1. h2load (C, one thread) loads them in alternating rounds:
#   - GetUserTier, 16 in flight over 16 connections (the issue's figure: Redis >= 0.5 of
#     embedded's requests/s, p99 < 2 ms);
#   - BatchGetUserTiers of 1,000 distinct users, 4 in flight over 4 connections (>= 200k users/s).
# The in-process client of `cargo bench --bench scale_out` decodes every answer on the same two
# cores as the server and Redis; h2load reads the bytes without decoding them, so what it
# measures is the server's cost, not the client's.
#
# serve_redis.sh BIN MODELS [ROUNDS] [SECS]
#   MODELS: a models directory with CURRENT (e.g. `tiering train --data DIR --models MODELS`).
# Needs h2load (nghttp2-client), redis-server and python3 (for the request bodies).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=$1; MODELS=$2; ROUNDS=${3:-3}; SECS=${4:-5}
W=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
wait_up() { wait_port "$1" 60 || { tail -n 5 "$W"/*.log >&2; exit 1; }; }

NOW=$(python3 -c 'import json,sys,os; m=json.load(open(os.path.join(sys.argv[1], open(os.path.join(sys.argv[1],"CURRENT")).read().strip(), "manifest.json"))); print(m.get("as_of") or m["data"]["as_of"])' "$MODELS" 2>/dev/null || echo 2026-11-01T00:00:00Z)

RP=$(free_port)
redis-server --bind 127.0.0.1 --port "$RP" --save "" --appendonly no --dir "$W" >"$W/redis.log" 2>&1 &
pids+=($!)
wait_up "$RP"

EP=$(free_port); XP=$(free_port)
# A fresh Redis each run: --reseed-state seeds it although MODELS records an earlier run's state.
# Rankings rebuilt once at start only (a rebuild mid-round would be measured as the backend).
export TIERING__RANKING_REBUILD_SECS=86400
"$BIN" serve --models "$MODELS" --listen 127.0.0.1:$EP --state "$W/state" --now "$NOW" >"$W/embedded.log" 2>&1 &
pids+=($!)
"$BIN" serve --models "$MODELS" --listen 127.0.0.1:$XP --state "redis://127.0.0.1:$RP" --reseed-state --now "$NOW" >"$W/redis-serve.log" 2>&1 &
pids+=($!)
wait_up "$EP"; wait_up "$XP"
t0=$(date +%s)
# Both answer an at-risk page once their ranking is built (the first build scans every user):
# from then on nothing but the loads runs.
for port in $EP $XP; do
  until "$BIN" at-risk --server 127.0.0.1:$port --min-probability 0 --limit 1000 --format csv --order-by churn-probability --include-churned >"$W/ids-$port.csv" 2>/dev/null; do sleep 1; done
done
echo "both servers ready, rankings built, $(( $(date +%s) - t0 )) s after the ports opened"

python3 - "$W" "$W/ids-$EP.csv" <<'PY'
import csv, sys
w, ids_csv = sys.argv[1], sys.argv[2]
ids = [r["user_id"] for r in csv.DictReader(open(ids_csv))][:1000]
assert len(ids) == 1000, len(ids)
def frame(msg): return b"\x00" + len(msg).to_bytes(4, "big") + msg
def s(field, v):
    b = v.encode(); return bytes([field << 3 | 2, len(b)]) + b
open(f"{w}/one", "wb").write(frame(s(1, ids[0])))
open(f"{w}/batch", "wb").write(frame(b"".join(s(1, i) for i in ids)))
PY

run() { # name port rpc body conns
  local figures
  figures=$(h2load_run "$W/lat" h2load -c "$5" -m 1 -t 1 -D "$SECS" --warm-up-time 1 -H 'content-type: application/grpc' \
    -H 'te: trailers' -d "$W/$4" "http://127.0.0.1:$2/tiering.v1.Tiering/$3")
  echo "$1 $3 $figures load=$(cut -d' ' -f1 /proc/loadavg)"
}
for _ in $(seq "$ROUNDS"); do
  run embedded "$EP" GetUserTier one 16
  run redis "$XP" GetUserTier one 16
done
for _ in $(seq "$ROUNDS"); do
  run embedded "$EP" BatchGetUserTiers batch 4
  run redis "$XP" BatchGetUserTiers batch 4
done
