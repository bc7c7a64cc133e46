#!/usr/bin/env bash
# Full-scale benchmark of the training side: generate, train and score at 1,000,000 users
# (~50M events) in release builds, with wall time and peak memory of each step.
#
#   bench/scale.sh [--users N] [--work DIR]
#
# Prints a Markdown table (and writes it to DIR/scale.md); BENCHMARKS.md quotes it.
set -euo pipefail
cd "$(dirname "$0")/.."
users=1000000
work=/tmp/tiering-scale
while [ $# -gt 0 ]; do
  case "$1" in
    --users) users="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    *) echo "usage: bench/scale.sh [--users N] [--work DIR]" >&2; exit 2 ;;
  esac
done
if [ ! -x /usr/bin/time ]; then
  apt-get update -qq && apt-get install -y -qq time >/dev/null
fi
cargo build --release --locked --quiet
bin="${CARGO_TARGET_DIR:-target}/release/tiering"
rm -rf "$work" && mkdir -p "$work"

step() { # name, then the command
  local name="$1"; shift
  /usr/bin/time -v -o "$work/$name.time" "$@" > "$work/$name.out" 2> "$work/$name.err"
  local wall rss
  wall=$(grep 'Elapsed (wall clock)' "$work/$name.time" | awk '{print $NF}')
  rss=$(grep 'Maximum resident set size' "$work/$name.time" | awk '{printf "%.2f", $NF/1048576}')
  echo "| $name | $wall | $rss GiB |" >> "$work/scale.md"
}

{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(rustc --version)"
  echo
  echo "| step | wall (m:ss) | peak RSS |"
  echo "| --- | --- | --- |"
} > "$work/scale.md"
step generate $bin generate --users "$users" --days 180 --seed 42 --end 2026-11-01 --out "$work/data"
step train $bin train --data "$work/data" --models "$work/models"
step score $bin score --models "$work/models" --data "$work/data" --out "$work/scores.parquet"
{
  echo
  echo "events: $(($(wc -l < "$work/data/events.csv") - 1))"
  echo
  echo '```'
  cat "$work/train.out"
  grep -h 'scored' "$work/score.out"
  echo '```'
} >> "$work/scale.md"
cat "$work/scale.md"
