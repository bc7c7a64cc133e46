#!/usr/bin/env bash
# The warehouse parity check (issue 16; sql/README.md "Checking parity"):
#   1. generate a data set (Parquet, seeded);
#   2. `tiering features` and DuckDB running sql/ write the aggregates at training's three
#      snapshots plus a fourth, mid-day one; warehouse/compare.py compares them column by
#      column (integers exact, spend/refunded within 1e-9 relative);
#   3. `train --data` on the events and `train --aggregates` on the DuckDB table give every
#      user the same tier and the same AUCs (within 1e-6);
#   4. so does the same table with its rows shuffled across three part files (the runners do
#      not sort their output: the readers must not depend on row order).
# With --spark, step 2 also runs the Spark job in local mode and compares its part files.
#
#   scripts/warehouse-test.sh [--spark]
#
# Installs its venv (warehouse/setup-venv.sh; duckdb, and pyspark with --spark). Uses the
# dev-profile binary (built if needed); TIERING_BIN points at another one. USERS sets the size.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SPARK=""
[[ "${1:-}" == "--spark" ]] && SPARK=1
USERS=${USERS:-3000}
AS_OF=2026-07-01T00:00:00Z
MIDDAY=2026-06-12T13:27:11Z

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tiering-warehouse.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

started=$(date +%s)
PY=$(warehouse/setup-venv.sh ${SPARK:+--spark} | tail -n 1)
echo "== venv ready in $(( $(date +%s) - started )) s"
BIN=${TIERING_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/tiering}
if [[ -z "${TIERING_BIN:-}" ]]; then
    cargo build --locked --features kafka --bin tiering
fi

"$BIN" generate --users "$USERS" --days 150 --seed 16 --end 2026-06-30 --format parquet \
    --channels --out "$WORK/data" >/dev/null
"$BIN" features --data "$WORK/data" --as-of "$AS_OF" --snapshot "$MIDDAY" \
    --out "$WORK/rust.parquet"
(cd warehouse && "$PY" duckdb_aggregates.py --events "$WORK/data/events.parquet" \
    --users "$WORK/data/users.parquet" --as-of "$AS_OF" --snapshot "$MIDDAY" \
    --out "$WORK/duckdb.parquet")
echo "== tiering features vs DuckDB"
"$PY" warehouse/compare.py "$WORK/rust.parquet" "$WORK/duckdb.parquet" \
    --events "$WORK/data/events.parquet"

if [[ -n "$SPARK" ]]; then
    t0=$(date +%s)
    (cd warehouse && "$PY" spark_aggregates.py --events "$WORK/data/events.parquet" \
        --users "$WORK/data/users.parquet" --as-of "$AS_OF" --snapshot "$MIDDAY" \
        --out "$WORK/spark")
    echo "== spark job took $(( $(date +%s) - t0 )) s; tiering features vs Spark"
    "$PY" warehouse/compare.py "$WORK/rust.parquet" "$WORK/spark" \
        --events "$WORK/data/events.parquet"
fi

echo "== train --data vs train --aggregates (the DuckDB table)"
"$BIN" train --data "$WORK/data" --as-of "$AS_OF" --seed 5 --models "$WORK/a" >/dev/null
"$BIN" train --aggregates "$WORK/duckdb.parquet" --as-of "$AS_OF" --seed 5 \
    --models "$WORK/b" >/dev/null
"$PY" warehouse/compare_bundles.py "$WORK/a" "$WORK/b"

echo "== train --data vs train --aggregates (the DuckDB table's rows shuffled, 3 part files)"
mkdir "$WORK/shuffled"
"$PY" - "$WORK/duckdb.parquet" "$WORK/shuffled" <<'PYEOF'
import sys, duckdb
src, out = sys.argv[1:]
for part in range(3):
    duckdb.sql(f"COPY (SELECT * FROM read_parquet('{src}') WHERE hash(user_id, 16) % 3 = {part} "
               f"ORDER BY hash(user_id, snapshot, 7)) TO '{out}/part-{part:05d}.parquet' (FORMAT PARQUET)")
PYEOF
"$BIN" train --aggregates "$WORK/shuffled" --as-of "$AS_OF" --seed 5 \
    --models "$WORK/c" >/dev/null
"$PY" warehouse/compare_bundles.py "$WORK/a" "$WORK/c"
echo "warehouse parity: OK"
