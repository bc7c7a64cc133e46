#!/usr/bin/env bash
# Server and load-generator CPU per GetUserTier request (embedded state), a figure a shared
# machine's load disturbs less than requests per second: the server's utime + stime from /proc
# across `h2load -c 16 -m 1 -t 1 -n N` (after a warm-up of N/8), divided by N; h2load's own CPU
# from /usr/bin/time.
#
#   bash bench/cpu_per_request.sh BIN MODELS USER_ID plain|tls|tls+token [N]
#
# BIN: a release `tiering`; MODELS: a models directory (e.g. 20k generated users); USER_ID: a
# user it holds. Needs h2load (nghttp2-client), openssl, python3. Prints one line.
# CONNS=C STREAMS=S: the 16 in flight as C connections of S streams each (default 16 x 1), as
# in bench/serve_tls.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CONNS=${CONNS:-16}; STREAMS=${STREAMS:-1}
BIN=$1; MODELS=$2; UID_=$3; MODE=$4; N=${5:-40000}
W=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
grpc_body "$W/body" "$UID_"
port=$(free_port)
args=(); scheme=http; hdr=()
if [ "$MODE" != plain ]; then
  self_signed_cert "$W"
  args=(--tls-cert "$W/cert.pem" --tls-key "$W/key.pem"); scheme=https
fi
if [ "$MODE" = tls+token ]; then
  TOKEN=$(reader_token "$BIN" "$W/keys.toml")
  args+=(--keys-file "$W/keys.toml"); hdr=(-H "authorization: Bearer $TOKEN")
fi
"$BIN" serve --models "$MODELS" --listen 127.0.0.1:$port --state "$W/state" "${args[@]}" > "$W/log" 2>&1 &
pid=$!
wait_port "$port" 30 || { cat "$W/log" >&2; exit 1; }
sleep 2
load() { h2load -c $CONNS -m $STREAMS -t 1 -n "$1" -H 'content-type: application/grpc' -H 'te: trailers' "${hdr[@]}" \
  -d "$W/body" "$scheme://127.0.0.1:$port/tiering.v1.Tiering/GetUserTier"; }
load $((N / 8)) > /dev/null
t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
out=$( { /usr/bin/time -f "h2cpu %U %S" bash -c "$(declare -f load); $(declare -p hdr); CONNS=$CONNS STREAMS=$STREAMS scheme=$scheme port=$port W=$W load $N"; } 2>&1 )
t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
ok=$(echo "$out" | grep -oE '[0-9]+ succeeded' | cut -d' ' -f1)
h2=$(echo "$out" | awk '/^h2cpu/ {print $2 + $3}')
python3 -c "import sys; n, hz = $N, $(getconf CLK_TCK); print(f'$MODE ok=$ok server_us_per_req={($t1 - $t0) / hz / n * 1e6:.1f} h2load_us_per_req={$h2 / n * 1e6:.1f}')"
