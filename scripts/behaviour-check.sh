#!/usr/bin/env bash
# Records what a build of `tiering` does on one fixed data set, so that a refactor can prove it
# changed no behaviour: diff the output folders of two builds.
#
#   scripts/behaviour-check.sh OUT_DIR            # uses target/release/tiering (TIERING_BIN to override)
#   diff -r before/ after/
#
# What it records (every file is text, deterministic for a given build and data):
# - models.sha256      sha256 of the fitted model (model.json) and the state seed (state.bin) of a
#                      first training and of a retrain on top of it (the previous-bundle path:
#                      identity matching, transitions)
# - metrics-*.json     the manifests' evaluation figures, tier table and warnings, without timings
# - scores.csv         `tiering score` of every user (and its sha256 in models.sha256)
# - grpc-user-*.json   `tiering user` answers from a live server for 40 fixed users
# - grpc-at-risk.csv   the at-risk list over gRPC (two pages of 300)
# The data: `generate --users 20000 --days 180 --seed 7 --end 2026-11-01`, trained with
# `--as-of 2026-11-01 --seed 42`, then retrained with `--seed 43`; served with
# `--now 2026-11-02T00:00:00Z`. Versions and creation times differ between runs and are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/behaviour-check.sh OUT_DIR}
BIN=${TIERING_BIN:-target/release/tiering}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tiering-behaviour.XXXXXX")
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

export RUST_LOG=warn
"$BIN" generate --users 20000 --days 180 --seed 7 --end 2026-11-01 --out "$WORK/data" >/dev/null
"$BIN" train --data "$WORK/data" --models "$WORK/models" --as-of 2026-11-01 --seed 42 >/dev/null
first=$(cat "$WORK/models/CURRENT")
"$BIN" train --data "$WORK/data" --models "$WORK/models" --as-of 2026-11-01 --seed 43 >/dev/null
second=$(cat "$WORK/models/CURRENT")

"$BIN" score --models "$WORK/models" --data "$WORK/data" --as-of 2026-11-01 --out "$OUT/scores.csv" >/dev/null
{
    for pair in "first:$first" "retrain:$second"; do
        for f in model.json state.bin; do
            echo "$(sha256sum < "$WORK/models/${pair#*:}/$f" | cut -d' ' -f1)  ${pair%%:*}/$f"
        done
    done
    echo "$(sha256sum < "$OUT/scores.csv" | cut -d' ' -f1)  scores.csv"
} > "$OUT/models.sha256"

# The manifests' figures, without what differs by run (versions, times, timings, paths).
for pair in "first:$first" "retrain:$second"; do
    name=${pair%%:*}
    v=${pair#*:}
    python3 - "$WORK/models/$v/manifest.json" > "$OUT/metrics-$name.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in ("fit_seconds", "previous_version")}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x
keep = {k: m.get(k) for k in ("as_of", "as_of_ts", "horizon_days", "churn_definition", "features", "features_left_out", "tiers", "metrics", "warnings")}
keep["data"] = {k: v for k, v in m.get("data", {}).items() if k in ("events", "users", "first_event", "last_event", "bad_rows_skipped")}
print(json.dumps(strip(keep), indent=1, sort_keys=True))
PY
done

# A live server: the same answers for fixed users.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
"$BIN" serve --models "$WORK/models" --listen "127.0.0.1:$PORT" --state "$WORK/state" \
    --now 2026-11-02T00:00:00Z > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!
SERVER="http://127.0.0.1:$PORT"
for _ in $(seq 300); do
    if "$BIN" user u0000001 --server "$SERVER" --format json > /dev/null 2>&1; then break; fi
    sleep 0.1
done
tail -n +2 "$OUT/scores.csv" | cut -d, -f1 | awk 'NR % 500 == 1' | head -40 > "$WORK/ids"
while read -r id; do
    "$BIN" user "$id" --server "$SERVER" --format json \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); d.pop("model_version",None); print(json.dumps(d, indent=1, sort_keys=True))' \
        > "$OUT/grpc-user-$id.json"
done < "$WORK/ids"
"$BIN" at-risk --server "$SERVER" --min-probability 0.3 --limit 600 --page-size 300 --format csv \
    | python3 -c '
import csv, sys
rows = list(csv.DictReader(sys.stdin))
drop = {"model_version"}
cols = [c for c in (rows[0].keys() if rows else []) if c not in drop]
w = csv.writer(sys.stdout); w.writerow(cols)
for r in rows: w.writerow([r[c] for c in cols])' > "$OUT/grpc-at-risk.csv"
echo "recorded in $OUT: $(ls "$OUT" | wc -l) files"
