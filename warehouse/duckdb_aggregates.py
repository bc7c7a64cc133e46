"""The aggregates table with DuckDB (one large machine): runs sql/duckdb/00_events.sql and the
shared steps over Parquet events, writes one Parquet file.

    python warehouse/duckdb_aggregates.py --events data/events.parquet \
        --users data/users.parquet --as-of 2026-06-01T00:00:00Z --out aggregates.parquet
"""

import time

import duckdb

from common import MATERIALISE, OPTIONAL_COLUMNS, arguments, created_view, snapshot_times, sql_files, statements, DAY


def run(args):
    started = time.time()
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    if args.memory_limit:
        con.execute(f"SET memory_limit = '{args.memory_limit}'")
    # Optional columns of the data contract the events may lack (as the tiering readers allow).
    have = {r[0] for r in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{args.events}')").fetchall()}
    extra = "".join(f", CAST(NULL AS {t}) AS {c}" for c, t in OPTIONAL_COLUMNS if c not in have)
    con.execute(f"CREATE OR REPLACE VIEW raw_events AS "
                f"SELECT *{extra} FROM read_parquet('{args.events}')")
    if args.users:
        con.execute(f"CREATE OR REPLACE VIEW raw_users AS SELECT * FROM read_parquet('{args.users}')")
    else:
        con.execute("CREATE OR REPLACE VIEW raw_users AS "
                    "SELECT CAST(NULL AS VARCHAR) AS user_id, CAST(NULL AS VARCHAR) AS registered_at "
                    "WHERE false")
    rows = ", ".join(f"({t}, {t // DAY}, {args.horizon_days})" for t in snapshot_times(args))
    con.execute("CREATE OR REPLACE TABLE snapshots (snapshot BIGINT, day BIGINT, horizon_days BIGINT)")
    con.execute(f"INSERT INTO snapshots VALUES {rows}")
    for path in sql_files("duckdb"):
        for stmt in statements(path):
            con.execute(stmt)
            name = created_view(stmt)
            if name in MATERIALISE:
                con.execute(f"CREATE OR REPLACE TEMPORARY TABLE {name}_m AS SELECT * FROM {name}")
                con.execute(f"CREATE OR REPLACE TEMPORARY VIEW {name} AS SELECT * FROM {name}_m")
    print(f"duckdb: views and partials in {time.time() - started:.2f} s")
    con.execute(f"COPY (SELECT * FROM aggregates ORDER BY snapshot, user_id) "
                f"TO '{args.out}' (FORMAT PARQUET, COMPRESSION SNAPPY)")
    n = con.execute(f"SELECT COUNT(*) FROM read_parquet('{args.out}')").fetchone()[0]
    print(f"duckdb: wrote {n} rows to {args.out}, {time.time() - started:.2f} s in all")


if __name__ == "__main__":
    p = arguments("DuckDB")
    p.add_argument("--memory-limit", help="DuckDB's memory_limit, e.g. 6GB (default: 80%% of RAM)")
    run(p.parse_args())
