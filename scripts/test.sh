#!/usr/bin/env bash
# The README's test command: installs what the tests start (Debian's redis-server and
# redis-cli; Debian's chromium and chromium-driver for the web console's browser test; the Kafka
# tests use librdkafka's in-process mock cluster, built with the `kafka` feature), then runs
# every test. Nothing is skipped: a test that needs an engine fails when it
# is missing.
#
# One build serves the whole suite: the tests run with `--features kafka`; the default (pure
# Rust) feature set is only checked.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if ((${#missing[@]})); then
  echo "== installing ${missing[*]} (apt-get)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

echo "== cargo check (default features: pure Rust, no Kafka)"
cargo check --locked --all-targets

echo "== cargo test --features kafka"
cargo test --locked --features kafka

echo "== python client (examples/python against a real server; installs its venv)"
scripts/python-client-test.sh

echo "== warehouse parity (sql/ on DuckDB vs tiering features; train --aggregates vs --data)"
scripts/warehouse-test.sh
