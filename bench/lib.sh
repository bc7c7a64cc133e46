# Helpers the bench scripts share; sourced: `. "$(dirname "$0")/lib.sh"`.

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# PORT [SECS]: waits up to SECS (default 60) for 127.0.0.1:PORT to accept a connection; fails
# with a message when it never does.
wait_port() {
  local _
  for _ in $(seq $(( ${2:-60} * 10 ))); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}

# FILE USER_ID: a gRPC-framed GetUserTierRequest for USER_ID, for `h2load -d FILE`.
grpc_body() {
  python3 - "$1" "$2" <<'PY'
import sys
uid = sys.argv[2].encode(); msg = b"\x0a" + bytes([len(uid)]) + uid
open(sys.argv[1], "wb").write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
PY
}

# DIR: a self-signed certificate for localhost and 127.0.0.1, DIR/cert.pem and DIR/key.pem.
self_signed_cert() {
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1/key.pem" -out "$1/cert.pem" -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1
  chmod 600 "$1/key.pem"
}

# BIN KEYS_FILE: adds a key named "bench" with the reader role to KEYS_FILE; prints its token.
reader_token() {
  "$1" keys add-token --name bench --roles reader --keys-file "$2" | grep -oE 'tk_[A-Za-z0-9_-]+' | head -1
}

# LOG Q: the Q quantile (0.5, 0.99) of the latencies in h2load's --log-file LOG, in ms.
quantile_ms() { cut -f3 "$1" | sort -n | awk -v q="$2" '{a[NR]=$1} END {print a[int(NR*q)]/1000}'; }

# LOG COMMAND...: runs COMMAND (an h2load command line, perhaps behind taskset) with its
# latencies in LOG (this run's only: h2load appends) and prints "rps=R ok=N p50_ms=A p99_ms=B".
h2load_run() {
  local log=$1 out rps ok; shift
  : > "$log"
  out=$("$@" --log-file "$log")
  rps=$(echo "$out" | grep -oE '[0-9.]+ req/s' | head -1 | cut -d' ' -f1)
  ok=$(echo "$out" | grep -oE '[0-9]+ succeeded' | cut -d' ' -f1)
  echo "rps=$rps ok=$ok p50_ms=$(quantile_ms "$log" 0.50) p99_ms=$(quantile_ms "$log" 0.99)"
}
