"""Compares two aggregates tables (files or directories of part files) column by column:
the same (user_id, snapshot) rows; integer columns (counts, times, sketches, labels, the
channel mix, the first order day and its cents) exactly; the float columns (spend, refunded)
within 1e-9 relative; the interests (schema v2) and the rooms (schema v3) as sets: see
`profile_check` below. Exits 1 on any difference.

    python warehouse/compare.py rust.parquet duckdb.parquet [--events events.parquet]

The first table is the Rust side's (`tiering features`), the second the engine's.
"""

import math
import pathlib
import sys

import duckdb

FLOATS = ["spend", "refunded"]
# The interest slots the Rust side holds (features::interests::INTEREST_SLOTS; `pos <= N` in
# sql/25_interests_channels.sql). The table has 4 interest columns; those beyond are null.
SLOTS = 3
COLUMNS = 4
INTERESTS = [f"interest_category_{i}" for i in range(COLUMNS)] + \
    [f"interest_level_{i}" for i in range(COLUMNS)]
# The room slots (features::interests::ROOM_SLOTS; `pos <= 2` in sql/27_rooms_first_day.sql),
# as many columns (schema v3).
ROOM_SLOTS = 2
ROOMS = [f"room_{i}" for i in range(ROOM_SLOTS)] + \
    [f"room_level_{i}" for i in range(ROOM_SLOTS)]
# (id column prefix, level column prefix, columns, slots, the events' column, label) per profile.
PROFILES = [("interest_category_", "interest_level_", COLUMNS, SLOTS, "category", "interests"),
            ("room_", "room_level_", ROOM_SLOTS, ROOM_SLOTS, "room_id", "rooms")]
# Level tolerance: the Rust side rounds each level to f32 after every event (2^-24 of ~300
# per step); 1e-3 in level is 0.07% of a score.
LEVEL_TOL = 1e-3


def source(path):
    p = pathlib.Path(path)
    return f"read_parquet('{p}/*.parquet')" if p.is_dir() else f"read_parquet('{p}')"


def main(a, b, events=None):
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
        if c in ("user_id", "snapshot") or c in INTERESTS or c in ROOMS:
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
    for profile in PROFILES:
        if profile[0] + "0" in cols:
            bad += profile_check(con, events, profile)
    print(f"{na} rows compared: " + ("identical" if bad == 0 else f"{bad} columns differ"))
    return 1 if bad else 0


def profiles(con, table, ids="interest_category_", levels="interest_level_", columns=COLUMNS):
    """{(user_id, snapshot): {id: level}} of one table's interest (or room) columns."""
    parts = " UNION ALL ".join(
        f"SELECT user_id, snapshot, {ids}{i} AS c, {levels}{i} AS l "
        f"FROM {table} WHERE {ids}{i} IS NOT NULL" for i in range(columns))
    out = {}
    for user, snap, c, level in con.execute(parts).fetchall():
        out.setdefault((user, snap), {})[c] = level
    return out


def category_counts(con, events, column="category"):
    """{(user_id, snapshot): distinct categories (or rooms) of the weighted events before it}."""
    rows = con.execute(
        f"SELECT e.user_id, s.snapshot, COUNT(DISTINCT e.{column}) "
        f"FROM {source(events)} e JOIN (SELECT DISTINCT snapshot FROM a) s "
        f"ON epoch(CAST(e.ts AS TIMESTAMPTZ)) < s.snapshot "
        f"WHERE e.{column} IS NOT NULL AND trim(CAST(e.{column} AS VARCHAR)) <> '' "
        f"AND e.kind <> 'refund' "
        f"GROUP BY 1, 2").fetchall()
    return {(u, t): n for u, t, n in rows}


def log2_add(x, y):
    hi, lo = max(x, y), min(x, y)
    return hi + math.log2(1 + 2 ** (lo - hi))


def profile_check(con, events, profile):
    """Users with at most SLOTS categories (rooms): the same ids, levels within LEVEL_TOL.
    Users with more (the Rust side is then a weighted Space-Saving sketch, the SQL side the
    exact top SLOTS): with m the Rust side's lowest level, every Rust score is within
    [true, true + 2^m] (an id not in the exact top has a true score below its last), and every
    id whose true level exceeds m is held. Without --events, a user is taken to have at most
    SLOTS ids when the engine's side holds fewer than SLOTS."""
    ids, levels, columns, slots, column, label = profile
    rust = profiles(con, "a", ids, levels, columns)
    sql = profiles(con, "b", ids, levels, columns)
    counts = category_counts(con, events, column) if events else None
    exact = bounded = 0
    worst = 0.0
    failures = []
    for key in set(rust) | set(sql):
        r, q = rust.get(key, {}), sql.get(key, {})
        n = counts.get(key, 0) if counts is not None else (len(q) if len(q) < slots else None)
        if n is not None and n <= slots:
            exact += 1
            ok = set(r) == set(q) and all(abs(r[c] - q[c]) <= LEVEL_TOL for c in r)
            worst = max([worst] + [abs(r[c] - q[c]) for c in r if c in q])
        else:
            bounded += 1
            m = min(r.values()) if len(r) == slots else None
            floor4 = min(q.values()) if q else float("-inf")
            ok = m is not None and len(q) == slots
            for c, level in r.items():
                if not ok:
                    break
                truth = q.get(c, floor4)
                ok = level <= log2_add(truth, m) + LEVEL_TOL and \
                    (c not in q or level >= q[c] - LEVEL_TOL)
            ok = ok and all(c in r for c, level in q.items() if level > m + LEVEL_TOL)
        if not ok:
            failures.append(f"{key}: rust {r} vs engine {q}")
    print(f"  {label:<16} {exact} rows exact (<= {slots} ids; max level "
          f"difference {worst:.2e}), {bounded} rows with more within the sketch's bound: "
          + ("ok" if not failures else f"{len(failures)} differ, e.g. {failures[0]}"))
    return 1 if failures else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    events = None
    if "--events" in args:
        i = args.index("--events")
        events = args[i + 1]
        del args[i:i + 2]
    sys.exit(main(args[0], args[1], events))
