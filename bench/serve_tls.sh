#!/usr/bin/env bash
# The cost of TLS and token auth on GetUserTier (bench/serve_tls.sh): one tiering binary, one
# bundle, h2load at 16 in flight over 16 connections, alternating plain / TLS / TLS + bearer
# token, ROUNDS rounds of SECS seconds; prints req/s and p99 per run. A self-signed certificate
# (openssl) and a reader key (`tiering keys add-token`) are made in a temporary directory.
# serve_tls.sh BIN MODELS_DIR USER_ID [ROUNDS] [SECS]
# PIN=1: the server on CPU 0 (one tokio worker) and h2load on CPU 1, so the load generator's
# own TLS work (it encrypts and decrypts every call too) runs beside the server instead of
# taking turns with it on the same two cores: what is left is the server's cost.
# CONNS=C STREAMS=S: the 16 in flight as C connections of S concurrent streams each (default 16
# x 1); a gRPC client channel multiplexes its calls over one or a few HTTP/2 connections.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CONNS=${CONNS:-16}; STREAMS=${STREAMS:-1}
BIN=$1; MODELS=$2; UID_=$3; ROUNDS=${4:-3}; SECS=${5:-5}
SRV=(); GEN=()
if [ "${PIN:-0}" = 1 ]; then SRV=(env TOKIO_WORKER_THREADS=1 taskset -c 0); GEN=(taskset -c 1); fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
grpc_body "$W/body" "$UID_"
self_signed_cert "$W"
TOKEN=$(reader_token "$BIN" "$W/keys.toml")
run() { # mode
  local port; port=$(free_port)
  local args=() scheme=http hdr=()
  case $1 in
    tls) args=(--tls-cert "$W/cert.pem" --tls-key "$W/key.pem"); scheme=https ;;
    tls+token) args=(--tls-cert "$W/cert.pem" --tls-key "$W/key.pem" --keys-file "$W/keys.toml"); scheme=https; hdr=(-H "authorization: Bearer $TOKEN") ;;
  esac
  rm -rf "$W/state"
  "${SRV[@]}" "$BIN" serve --models "$MODELS" --listen 127.0.0.1:$port --state "$W/state" --now 2026-11-02T00:00:00Z "${args[@]}" > "$W/log-$1" 2>&1 &
  local pid=$!
  wait_port "$port" 30 || { cat "$W/log-$1" >&2; kill -TERM $pid; exit 1; }
  sleep 2
  if [ "$1" = tls+token ] && command -v curl >/dev/null; then
    # The load is only meaningful if the token is accepted: one call must answer grpc-status 0.
    curl -sk --http2 -o /dev/null -D - -H 'content-type: application/grpc' -H 'te: trailers' "${hdr[@]}" \
      --data-binary @"$W/body" https://127.0.0.1:$port/tiering.v1.Tiering/GetUserTier | grep -qi '^grpc-status: 0' \
      || { echo "the token was refused" >&2; kill -TERM $pid; exit 1; }
  fi
  local figures; figures=$(h2load_run "$W/lat" "${GEN[@]}" h2load -c "$CONNS" -m "$STREAMS" -t 1 -D "$SECS" --warm-up-time 1 -H 'content-type: application/grpc' -H 'te: trailers' "${hdr[@]}" -d "$W/body" $scheme://127.0.0.1:$port/tiering.v1.Tiering/GetUserTier)
  kill -TERM $pid; wait $pid 2>/dev/null || true
  echo "$1 $figures load=$(cut -d' ' -f1 /proc/loadavg)"
}
for _ in $(seq "$ROUNDS"); do run plain; run tls; run tls+token; done
