"""The aggregates table with DuckDB (one large machine): runs sql/duckdb/00_events.sql and the
shared steps over Parquet events, writes one Parquet file.

    python warehouse/duckdb_aggregates.py --events data/events.parquet \
        --users data/users.parquet --as-of 2026-06-01T00:00:00Z --out aggregates.parquet \
        --memory-limit 6GB --max-temp-size 15GB

Bounded: DuckDB works in a database file under `--work-dir` (the materialised steps are
stored there compressed, not held in memory), within `--memory-limit`, and spills at most
`--max-temp-size` to that directory (it fails instead of filling the disk). Each
materialised step is freed once nothing downstream reads it, and the output is not sorted
(the tiering readers take rows in any order). Threads: every core.
"""

import os
import pathlib
import shutil
import tempfile
import time

import duckdb

from common import (DAY, JOIN_PARTS, MATERIALISE, OPTIONAL_COLUMNS, RELEASE_AFTER, arguments, created_view,
                    snapshot_times, sql_files, statements)


def connect(args, work):
    con = duckdb.connect(str(work / "work.duckdb"))
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET temp_directory = '{work / 'spill'}'")
    con.execute(f"SET max_temp_directory_size = '{args.max_temp_size}'")
    if args.memory_limit:
        con.execute(f"SET memory_limit = '{args.memory_limit}'")
    return con


def inputs(con, args):
    # Optional columns of the data contract the events may lack (as the tiering readers allow).
    have = {r[0] for r in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{args.events}')").fetchall()}
    extra = "".join(f", CAST(NULL AS {t}) AS {c}" for c, t in OPTIONAL_COLUMNS if c not in have)
    con.execute(f"CREATE OR REPLACE TEMPORARY VIEW raw_events AS "
                f"SELECT *{extra} FROM read_parquet('{args.events}')")
    if args.users:
        con.execute(f"CREATE OR REPLACE TEMPORARY VIEW raw_users AS "
                    f"SELECT * FROM read_parquet('{args.users}')")
    else:
        con.execute("CREATE OR REPLACE TEMPORARY VIEW raw_users AS "
                    "SELECT CAST(NULL AS VARCHAR) AS user_id, CAST(NULL AS VARCHAR) AS registered_at "
                    "WHERE false")
    rows = ", ".join(f"({t}, {t // DAY}, {args.horizon_days})" for t in snapshot_times(args))
    con.execute("CREATE OR REPLACE TABLE snapshots (snapshot BIGINT, day BIGINT, horizon_days BIGINT)")
    con.execute(f"INSERT INTO snapshots VALUES {rows}")


def run(args):
    started = time.time()
    out = pathlib.Path(args.out).resolve()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tiering-duckdb.", dir=args.work_dir or out.parent))
    try:
        con = connect(args, work)
        inputs(con, args)
        for path in sql_files("duckdb"):
            for stmt in statements(path):
                con.execute(stmt)
                name = created_view(stmt)
                if name not in MATERIALISE + JOIN_PARTS:
                    continue
                t0 = time.time()
                con.execute(f"CREATE OR REPLACE TABLE {name}_m AS SELECT * FROM {name}")
                con.execute(f"CREATE OR REPLACE TEMPORARY VIEW {name} AS SELECT * FROM {name}_m")
                for done in RELEASE_AFTER.get(name, []):
                    con.execute(f"DROP TABLE {done}_m")
                if args.verbose:
                    print(f"duckdb: {name} in {time.time() - t0:.1f} s", flush=True)
        print(f"duckdb: views and partials in {time.time() - started:.2f} s", flush=True)
        con.execute(f"COPY (SELECT * FROM aggregates) TO '{out}' (FORMAT PARQUET, COMPRESSION SNAPPY)")
        n = con.execute(f"SELECT COUNT(*) FROM read_parquet('{out}')").fetchone()[0]
        con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"duckdb: wrote {n} rows to {out}, {time.time() - started:.2f} s in all")


if __name__ == "__main__":
    p = arguments("DuckDB")
    p.add_argument("--memory-limit",
                   help="DuckDB's memory_limit, e.g. 6GB (default: DuckDB's, 80%% of RAM)")
    p.add_argument("--max-temp-size", default="15GB",
                   help="the most DuckDB may spill to disk (max_temp_directory_size); default 15GB")
    p.add_argument("--work-dir",
                   help="where the working database and the spill go (default: beside --out); "
                        "removed at the end")
    p.add_argument("--verbose", action="store_true", help="print each materialised step's time")
    run(p.parse_args())
