#!/usr/bin/env bash
# Proves the gRPC API works from another language: trains a small bundle, serves it on a free
# local port, and runs the Python example client (examples/python/client.py) against it.
#
#   scripts/python-client-test.sh
#
# Needs python3 (with venv) and access to PyPI for the pinned requirements; the venv is kept in
# target/python-venv (override with TIERING_PY_VENV) and reinstalled when requirements.txt
# changes. Uses the dev-profile binary (target/debug/tiering, built if needed: a no-op after
# `cargo test`); TIERING_BIN points at another one. Exits non-zero on any failure, and always
# stops the server it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tiering-python.XXXXXX")
SERVER_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 && -f "$WORK/serve.log" ]]; then
        echo "--- server log (last 40 lines)" >&2
        tail -n 40 "$WORK/serve.log" >&2 || true
    fi
    rm -rf "$WORK"
    if [[ $rc -ne 0 ]]; then
        echo "python client test FAILED" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { echo "== $*"; }

# 1. Python environment.
VENV=${TIERING_PY_VENV:-$TARGET_DIR/python-venv}
REQ=examples/python/requirements.txt
if [[ ! -x "$VENV/bin/python" ]]; then
    step "creating the venv $VENV"
    python3 -m venv "$VENV"
fi
if ! cmp -s "$REQ" "$VENV/.requirements.installed"; then
    step "installing $REQ"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
    cp "$REQ" "$VENV/.requirements.installed"
fi

# 2. The binary (dev profile; reuses the CI build).
BIN=${TIERING_BIN:-}
if [[ -z "$BIN" ]]; then
    step "cargo build (dev profile)"
    cargo build --quiet --locked --bin tiering
    BIN=$TARGET_DIR/debug/tiering
fi
[[ -x "$BIN" ]] || { echo "no tiering binary at $BIN" >&2; exit 1; }

# 3. A small data set and a bundle. The history ends with 2026-06-30; the server's clock is
#    pinned to the end of that day so the answers do not depend on today's date.
export RUST_LOG=${RUST_LOG:-warn}
step "generating data and training"
"$BIN" generate --users 3000 --days 150 --seed 1 --end 2026-06-30 --out "$WORK/data" >/dev/null
"$BIN" train --data "$WORK/data" --models "$WORK/models" --seed 1 >/dev/null

# 4. The server on a free port: it prints `tiering: gRPC on ADDR` once bound.
step "starting tiering serve"
"$BIN" serve --models "$WORK/models" --state "$WORK/state" --listen 127.0.0.1:0 \
    --now 2026-07-01T00:00:00Z 2>"$WORK/serve.log" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 300); do
    ADDR=$(sed -n 's/^tiering: gRPC on \([0-9.]*:[0-9]*\).*/\1/p' "$WORK/serve.log" | head -n 1)
    [[ -n "$ADDR" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server exited at start" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$ADDR" ]] || { echo "the server did not report its address within 30 s" >&2; exit 1; }
echo "server on $ADDR (pid $SERVER_PID)"

# 5. The client waits for health SERVING (the model loads after the bind), then checks.
step "python client"
"$VENV/bin/python" examples/python/client.py --server "$ADDR" --wait-ready 60 \
    --min-probability 0.3 --limit 1000 --page-size 64

# 6. Again over TLS with a token: a CA and a server certificate (openssl), an API key from
#    `tiering keys add-token`, a second server with --tls-cert/--tls-key/--keys-file, and the
#    client with --tls-ca and TIERING_TOKEN (it also checks that a call without it is refused).
step "TLS and a token"
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=test CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null
"$BIN" keys add-token --name python --roles reader,retention --keys-file "$WORK/keys.toml" \
    >"$WORK/token" 2>/dev/null
: >"$WORK/serve.log"
"$BIN" serve --models "$WORK/models" --state "$WORK/state" --listen 127.0.0.1:0 \
    --now 2026-07-01T00:00:00Z --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key" \
    --keys-file "$WORK/keys.toml" 2>"$WORK/serve.log" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 300); do
    ADDR=$(sed -n 's/^tiering: gRPC on \([0-9.]*:[0-9]*\).*/\1/p' "$WORK/serve.log" | head -n 1)
    [[ -n "$ADDR" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the TLS server exited at start" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$ADDR" ]] || { echo "the TLS server did not report its address within 30 s" >&2; exit 1; }
TIERING_TOKEN=$(cat "$WORK/token") "$VENV/bin/python" examples/python/client.py \
    --server "$ADDR" --tls-ca "$WORK/ca.pem" --tls-server-name localhost --wait-ready 60 \
    --min-probability 0.3 --limit 1000 --page-size 64
