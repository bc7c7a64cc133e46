"""Compares two aggregates tables (files or directories of part files) column by column:
the same (user_id, snapshot) rows; integer columns (counts, times, sketches, labels) exactly;
the float columns (spend, refunded) within 1e-9 relative. Exits 1 on any difference.

    python warehouse/compare.py rust.parquet duckdb.parquet
"""

import pathlib
import sys

import duckdb

FLOATS = ["spend", "refunded"]


def source(path):
    p = pathlib.Path(path)
    return f"read_parquet('{p}/*.parquet')" if p.is_dir() else f"read_parquet('{p}')"


def main(a, b):
    con = duckdb.connect()
    con.execute(f"CREATE VIEW a AS SELECT * FROM {source(a)}")
    con.execute(f"CREATE VIEW b AS SELECT * FROM {source(b)}")
    cols = [r[0] for r in con.execute("DESCRIBE a").fetchall()]
    other = [r[0] for r in con.execute("DESCRIBE b").fetchall()]
    if sorted(cols) != sorted(other):
        print(f"columns differ: {sorted(set(cols) ^ set(other))}")
        return 1
    na, nb = (con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in "ab")
    only = con.execute(
        "SELECT COUNT(*) FROM a FULL JOIN b USING (user_id, snapshot) "
        "WHERE a.user_id IS NULL OR b.user_id IS NULL").fetchone()[0]
    bad = 0
    if na != nb or only:
        print(f"rows: {na} vs {nb}, {only} (user_id, snapshot) keys on one side only")
        bad += 1
    for c in cols:
        if c in ("user_id", "snapshot"):
            continue
        if c in FLOATS:
            cond = (f"NOT (abs(a.{c} - b.{c}) <= 1e-9 * greatest(abs(a.{c}), abs(b.{c})) "
                    f"OR (a.{c} = b.{c}))")
        else:
            cond = f"a.{c} IS DISTINCT FROM b.{c}"
        n, example = con.execute(
            f"SELECT COUNT(*), ANY_VALUE(a.user_id || ' @' || a.snapshot || ': ' || "
            f"COALESCE(CAST(a.{c} AS VARCHAR), 'null') || ' vs ' || "
            f"COALESCE(CAST(b.{c} AS VARCHAR), 'null')) "
            f"FROM a JOIN b USING (user_id, snapshot) WHERE {cond}").fetchone()
        status = "ok" if n == 0 else f"{n} rows differ, e.g. {example}"
        print(f"  {c:<16} {status}")
        bad += n != 0
    print(f"{na} rows compared: " + ("identical" if bad == 0 else f"{bad} columns differ"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
