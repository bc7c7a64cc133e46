#!/usr/bin/env bash
# rss.sh BIN MODELS TAG: start a server on MODELS with an empty embedded state, wait until it
# answers GetUserTier for u0000002, print its VmRSS (MiB) after load, stop it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
mkdir -p "${OUT:-/tmp/tiering-bench}"
BIN=$1; MODELS=$2; TAG=$3
port=$(free_port)
rm -rf "${OUT:-/tmp/tiering-bench}/state-$TAG"
start=$(date +%s.%N)
"$BIN" serve --models "$MODELS" --listen 127.0.0.1:$port --state "${OUT:-/tmp/tiering-bench}/state-$TAG" --now 2026-11-02T00:00:00Z > "${OUT:-/tmp/tiering-bench}/serve-$TAG.log" 2>&1 &
pid=$!
for _ in $(seq 1200); do "$BIN" user u0000002 --server http://127.0.0.1:$port > "${OUT:-/tmp/tiering-bench}/user-$TAG.txt" 2>&1 && break; sleep 0.25; done
ready=$(date +%s.%N)
sleep 2
rss0=$(awk '/VmRSS/{printf "%.0f", $2/1024}' /proc/$pid/status)
for _ in $(seq 600); do grep -q "at-risk ranking rebuilt" "${OUT:-/tmp/tiering-bench}/serve-$TAG.log" && break; sleep 0.5; done
sleep 2
rss=$(awk '/VmRSS/{printf "%.0f", $2/1024}' /proc/$pid/status)
hwm=$(awk '/VmHWM/{printf "%.0f", $2/1024}' /proc/$pid/status)
kill -TERM $pid; wait $pid 2>/dev/null || true
echo "$TAG rss_after_seed_mb=$rss0 rss_after_ranking_mb=$rss hwm_mb=$hwm ready_s=$(echo "$ready - $start" | bc)"
