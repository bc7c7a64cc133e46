#!/usr/bin/env bash
# tiering side by side with the Python stack (pandas + scikit-learn + LightGBM + lifetimes +
# a grpcio server), on one generated data set, identical snapshots and label windows.
#
#   bench/compare.sh [--users N] [--skip-serving] [--duration SECS] [--repeats R]
#                    [--work DIR] [--out FILE]
#
#   --users N        users to generate (default 20000; 180 days, seed 42, ~52 events a user)
#   --skip-serving   steps 1, 2 and the report only
#   --duration SECS  each h2load run (default 10; plus 1 s of warm-up)
#   --repeats R      training runs per side, the median is reported (default 3; 1 above 100k users)
#   --work DIR       scratch directory (default bench/out/compare-N, git-ignored)
#   --out FILE       results file (default BENCHMARKS-compare.md; its section for N users is
#                    replaced, sections for other N are kept)
#
# Steps: set up bench/.venv from bench/python/requirements.txt; cargo build --release; generate
# (--no-refunds: bench/python computes gross spend and knows no refund kind, so both sides see
# the same data set as before refunds existed);
# 1. quality (tiering train --export-eval, then bench/python/quality.py on exactly those rows);
#    1b. the real log (CDNOW, shipped in the lifetimes wheel): bench/python/btyd_compare.py, our
#    BG/NBD + Gamma-Gamma against lifetimes and the value/churn figures at two cutoffs (btyd.json);
# 2. training wall time and peak RSS (tiering train vs bench/python/pipeline.py, /usr/bin/time -v);
# 3. serving (tiering serve vs bench/python/server.py under the same h2load runs, 127.0.0.1 only);
# 4. the report (bench/python/report.py). Exits non-zero if any step fails. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

users=20000
skip_serving=0
duration=10
repeats=""
work=""
out="$root/BENCHMARKS-compare.md"
usage() { sed -n '5,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --users) users="$2"; shift 2 ;;
    --skip-serving) skip_serving=1; shift ;;
    --duration) duration="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[[ "$users" =~ ^[0-9]+$ ]] || { echo "--users takes a number" >&2; exit 2; }
[[ "$duration" =~ ^[1-9][0-9]*$ ]] || { echo "--duration takes whole seconds >= 1" >&2; exit 2; }
[ -n "$repeats" ] || { if [ "$users" -le 100000 ]; then repeats=3; else repeats=1; fi; }
[ -n "$work" ] || work="$root/bench/out/compare-$users"
case "$out" in /*) ;; *) out="$root/$out" ;; esac

log() { echo "== $(date +%H:%M:%S) $*"; }
pids=()   # servers we started
fg_pid="" # the step running now
# Runs a step as a background job and waits for it, so that a signal is handled at once (bash
# defers traps until a foreground command ends) and the trap can stop the step too.
run() { "$@" & fg_pid=$!; wait "$fg_pid"; }
cleanup() {
  local rc=$?
  if [ -n "$fg_pid" ] && kill -0 "$fg_pid" 2>/dev/null; then
    pkill -TERM -P "$fg_pid" 2>/dev/null || true # its children (h2load), by parent pid
    kill "$fg_pid" 2>/dev/null || true
  fi
  for p in "${pids[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true
  done
  [ "$rc" -eq 0 ] || echo "bench/compare.sh failed (exit $rc); logs in $work" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools -------------------------------------------------------------------------------------
need_apt=()
[ -x /usr/bin/time ] || need_apt+=(time)
[ "$skip_serving" -eq 1 ] || command -v h2load >/dev/null || need_apt+=(nghttp2-client)
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

venv="$root/bench/.venv"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi
log "pip install -r bench/python/requirements.txt"
"$py" -m pip install -q --disable-pip-version-check -r bench/python/requirements.txt
export PYTHONWARNINGS=ignore
# OpenMP (LightGBM, scikit-learn's KMeans) spin-waits by default; on a machine where anything else
# runs, a spinning thread that lost its core stalls the team: measured 25-50 s instead of 5 s for
# the 20k-user pipeline here. Passive waiting gives the Python stack its best case.
export OMP_WAIT_POLICY=PASSIVE

log "cargo build --release"
cargo build --release --locked --quiet
# The scratch directory is emptied: refuse one that this script did not make.
if [ -d "$work" ] && [ -n "$(ls -A "$work")" ] && [ ! -e "$work/.compare-work" ]; then
  echo "$work exists and was not made by bench/compare.sh; choose another --work" >&2
  exit 2
fi
rm -rf "$work" && mkdir -p "$work" && touch "$work/.compare-work"
# A private copy: a concurrent `cargo build` must not swap the binary in the middle of the run.
cp "${CARGO_TARGET_DIR:-$root/target}/release/tiering" "$work/tiering"
bin="$work/tiering"
cd "$work"
"$py" "$root/bench/python/report.py" env --json env.json --users "$users" --repeats "$repeats" \
  --duration "$duration" --venv "$venv" --bin "$bin" --root "$root"

log "generate $users users"
"$bin" generate --users "$users" --days 180 --seed 42 --end 2026-11-01 --no-refunds --out data > generate.out 2> generate.err

# ---- 1. quality --------------------------------------------------------------------------------
log "1. quality: tiering train --export-eval"
run /usr/bin/time -v -o train-quality.time "$bin" train --data data --models models --export-eval eval \
  > train-quality.out 2> train-quality.err
log "1. quality: feature parity of the pandas pipeline with the exported rows"
run "$py" "$root/bench/python/pipeline.py" --data data --parity eval --json parity.json > parity.out
log "1. quality: scikit-learn, LightGBM, lifetimes on the same rows"
run "$py" "$root/bench/python/quality.py" --eval eval --data data --models models --json quality.json \
  > quality.out
cat quality.out
k=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["clustering"]["k"])' quality.json)

# ---- 1b. the real log: BG/NBD + Gamma-Gamma and the value figures against lifetimes ------------
log "1b. real data (CDNOW from the lifetimes wheel): value figures and churn, two cutoffs"
run "$py" "$root/bench/python/btyd_compare.py" --bin "$bin" --work btyd --json btyd.json > btyd.out

# ---- 2. training speed and memory --------------------------------------------------------------
timed() { # name, then the command; wall time and peak RSS from /usr/bin/time -v
  local name="$1"; shift
  cut -d' ' -f1 /proc/loadavg > "$name.load"
  run /usr/bin/time -v -o "$name.time" "$@" > "$name.out" 2> "$name.err"
}
for r in $(seq 1 "$repeats"); do
  # Alternate the order so that neither side always runs on a warmer page cache.
  if [ $((r % 2)) -eq 1 ]; then order="tiering python"; else order="python tiering"; fi
  for side in $order; do
    log "2. training, run $r/$repeats: $side (k = $k)"
    if [ "$side" = tiering ]; then
      timed "train-tiering-$r" "$bin" train --data data --models "models-speed-$r" --k "$k"
    else
      timed "train-python-$r" "$py" "$root/bench/python/pipeline.py" --data data --out "python-$r" \
        --k "$k" --json "train-python-$r.json"
    fi
  done
done

# ---- 3. serving --------------------------------------------------------------------------------
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [ "$skip_serving" -eq 0 ]; then
  log "3. serving: stubs and request bodies"
  "$py" "$root/bench/python/loadgen.py" stubs --proto "$root/proto" --out stubs
  "$py" "$root/bench/python/loadgen.py" bodies --model python-1/model.pkl --stubs stubs --out bodies
  as_of=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["as_of"])' eval/meta.json)
  rm -f serving.json

  port=$(free_port)
  log "3. serving: tiering serve on 127.0.0.1:$port (--now $as_of)"
  "$bin" serve --models models --listen "127.0.0.1:$port" --state state --now "$as_of" \
    > serve-tiering.out 2> serve-tiering.err &
  pids+=($!)
  run "$py" "$root/bench/python/loadgen.py" preflight --port "$port" --pid "${pids[-1]}" --bodies bodies \
    --stubs stubs > preflight-tiering.json
  run "$py" "$root/bench/python/loadgen.py" run --port "$port" --pid "${pids[-1]}" --name tiering \
    --bodies bodies --duration "$duration" --json serving.json
  kill "${pids[-1]}"; wait "${pids[-1]}" || true

  port=$(free_port)
  log "3. serving: Python grpcio server on 127.0.0.1:$port"
  "$py" "$root/bench/python/server.py" --model python-1/model.pkl --port "$port" --proto-out stubs \
    > serve-python.out 2> serve-python.err &
  pids+=($!)
  run "$py" "$root/bench/python/loadgen.py" preflight --port "$port" --pid "${pids[-1]}" --bodies bodies \
    --stubs stubs > preflight-python.json
  run "$py" "$root/bench/python/loadgen.py" run --port "$port" --pid "${pids[-1]}" --name python \
    --bodies bodies --duration "$duration" --json serving.json
  kill "${pids[-1]}"; wait "${pids[-1]}" || true

  # The best case a Python team could hand-write: the same models applied with numpy and
  # LightGBM's Booster directly (no scikit-learn input validation per call). Fewer runs.
  port=$(free_port)
  log "3. serving: Python grpcio server, numpy path, on 127.0.0.1:$port"
  "$py" "$root/bench/python/server.py" --model python-1/model.pkl --port "$port" --proto-out stubs \
    --path numpy > serve-python-numpy.out 2> serve-python-numpy.err &
  pids+=($!)
  run "$py" "$root/bench/python/loadgen.py" preflight --port "$port" --pid "${pids[-1]}" --bodies bodies \
    --stubs stubs > preflight-python-numpy.json
  run "$py" "$root/bench/python/loadgen.py" run --port "$port" --pid "${pids[-1]}" --name python-numpy \
    --bodies bodies --duration "$duration" --concurrency 1 16 --batch-concurrency 1 --json serving.json
  kill "${pids[-1]}"; wait "${pids[-1]}" || true
fi

# ---- 4. report ---------------------------------------------------------------------------------
log "4. report -> $out"
cut -d' ' -f1 /proc/loadavg > load-end.txt
"$py" "$root/bench/python/report.py" write --work "$work" --out "$out"
