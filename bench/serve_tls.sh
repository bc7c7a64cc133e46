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
CONNS=${CONNS:-16}; STREAMS=${STREAMS:-1}
BIN=$1; MODELS=$2; UID_=$3; ROUNDS=${4:-3}; SECS=${5:-5}
SRV=(); GEN=()
if [ "${PIN:-0}" = 1 ]; then SRV=(env TOKIO_WORKER_THREADS=1 taskset -c 0); GEN=(taskset -c 1); fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
python3 - "$W/body" "$UID_" <<'PY'
import sys
uid=sys.argv[2].encode(); msg=b"\x0a"+bytes([len(uid)])+uid
open(sys.argv[1],"wb").write(b"\x00"+len(msg).to_bytes(4,"big")+msg)
PY
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1
chmod 600 "$W/key.pem"
TOKEN=$("$BIN" keys add-token --name bench --roles reader --keys-file "$W/keys.toml" | grep -oE 'tk_[A-Za-z0-9_-]+' | head -1)
run() { # mode
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local args=() scheme=http hdr=()
  case $1 in
    tls) args=(--tls-cert "$W/cert.pem" --tls-key "$W/key.pem"); scheme=https ;;
    tls+token) args=(--tls-cert "$W/cert.pem" --tls-key "$W/key.pem" --keys-file "$W/keys.toml"); scheme=https; hdr=(-H "authorization: Bearer $TOKEN") ;;
  esac
  rm -rf "$W/state"
  "${SRV[@]}" "$BIN" serve --models "$MODELS" --listen 127.0.0.1:$port --state "$W/state" --now 2026-11-02T00:00:00Z "${args[@]}" > "$W/log-$1" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  sleep 2
  if [ "$1" = tls+token ] && command -v curl >/dev/null; then
    # The load is only meaningful if the token is accepted: one call must answer grpc-status 0.
    curl -sk --http2 -o /dev/null -D - -H 'content-type: application/grpc' -H 'te: trailers' "${hdr[@]}" \
      --data-binary @"$W/body" https://127.0.0.1:$port/tiering.v1.Tiering/GetUserTier | grep -qi '^grpc-status: 0' \
      || { echo "the token was refused" >&2; kill -TERM $pid; exit 1; }
  fi
  : > "$W/lat" # h2load appends to --log-file: one run's latencies only
  local out; out=$("${GEN[@]}" h2load -c "$CONNS" -m "$STREAMS" -t 1 -D "$SECS" --warm-up-time 1 -H 'content-type: application/grpc' -H 'te: trailers' "${hdr[@]}" -d "$W/body" --log-file "$W/lat" $scheme://127.0.0.1:$port/tiering.v1.Tiering/GetUserTier)
  kill -TERM $pid; wait $pid 2>/dev/null || true
  local rps; rps=$(echo "$out" | grep -oE '[0-9.]+ req/s' | head -1 | cut -d' ' -f1)
  local ok; ok=$(echo "$out" | grep -oE '[0-9]+ succeeded' | cut -d' ' -f1)
  local p99; p99=$(cut -f3 "$W/lat" | sort -n | awk '{a[NR]=$1} END {print a[int(NR*0.99)]/1000}')
  echo "$1 rps=$rps ok=$ok p99_ms=$p99 load=$(cut -d' ' -f1 /proc/loadavg)"
}
for _ in $(seq "$ROUNDS"); do run plain; run tls; run tls+token; done
