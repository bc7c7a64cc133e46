"""A large aggregates table of the right shape for benchmarks (not run in CI): `copies` copies
of a real table (e.g. `tiering features` on 100k generated users), each copy's user ids
suffixed `-c<k>`, written as Parquet part files (one per `--parts`). The 10M-user table of
BENCHMARKS.md ("Warehouse aggregates"):

    tiering generate --users 100000 --days 120 --seed 7 --end 2026-11-01 --format parquet \
        --channels --out s100k/data
    tiering features --data s100k/data --as-of 2026-11-02T00:00:00Z --out s100k/aggs.parquet
    python warehouse/synthesise_table.py --table s100k/aggs.parquet --copies 100 --parts 10 \
        --out t10m/
"""

import argparse
import pathlib

import duckdb


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--table", required=True)
    p.add_argument("--copies", type=int, required=True)
    p.add_argument("--parts", type=int, default=8)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET memory_limit = '3GB'")
    con.execute("SET max_temp_directory_size = '2GB'")
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{a.table}')").fetchall()]
    rest = ", ".join(c for c in cols if c != "user_id")
    per = (a.copies + a.parts - 1) // a.parts
    for part in range(a.parts):
        lo, hi = part * per, min(a.copies, (part + 1) * per)
        if lo >= hi:
            break
        con.execute(
            f"COPY (SELECT t.user_id || '-c' || CAST(k.range AS VARCHAR) AS user_id, {rest} "
            f"FROM read_parquet('{a.table}') t CROSS JOIN range({lo}, {hi}) k) "
            f"TO '{out}/part-{part:05d}.parquet' (FORMAT PARQUET, COMPRESSION SNAPPY)")
    n = con.execute(f"SELECT COUNT(*), COUNT(DISTINCT user_id) FROM read_parquet('{out}/*.parquet')").fetchone()
    print(f"{n[0]} rows, {n[1]} users -> {out}")


if __name__ == "__main__":
    main()
