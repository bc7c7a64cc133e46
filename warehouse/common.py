"""What the DuckDB and the Spark runner share: flags, snapshot times, the SQL files in order."""

import argparse
import datetime as dt
import pathlib
import re

SQL_DIR = pathlib.Path(__file__).resolve().parent.parent / "sql"
SHARED = ["10_refund_links.sql", "20_daily_partials.sql", "25_interests_channels.sql",
          "27_rooms_first_day.sql", "30_rollup.sql"]
# Views read more than once downstream: the runners materialise them (DuckDB: a table; Spark:
# cached) instead of recomputing them for every reader.
MATERIALISE = ["room_bits", "category_bits", "ev", "ev_flagged", "daily", "interest_daily",
               "channel_daily", "room_daily"]
# DuckDB also materialises the parts of the final join, so the last statement joins per-user
# tables instead of running every aggregation and window in one plan, and frees each
# materialisation once nothing downstream reads it (the key: the view whose materialisation
# is the last reader). The per-event tables are the large ones: 52M rows each for 1M users.
# (Spark caches lazily, at the final write: it cannot free a cache before that.)
JOIN_PARTS = ["interest_top", "channel_mix", "room_top", "first_orders", "rolled", "labels",
              "all_users"]
RELEASE_AFTER = {"interest_top": ["interest_daily"], "room_daily": ["ev_flagged"],
                 "channel_mix": ["channel_daily"], "room_top": ["room_daily"],
                 "rolled": ["daily"], "all_users": ["ev"]}
DAY = 86400
# Columns of the events contract that may be absent (the tiering readers take them as empty):
# the runners add them as nulls. (name, SQL type valid in both engines)
OPTIONAL_COLUMNS = [("amount", "DOUBLE"), ("watch_seconds", "BIGINT"), ("room_id", "STRING"),
                    ("category", "STRING"), ("order_id", "STRING"), ("channel", "STRING")]


def parse_time(text):
    """RFC 3339 (or YYYY-MM-DD = the end of that day, UTC, as the tiering CLI reads it) to
    Unix seconds."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        d = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
        return int(d.timestamp()) + DAY
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise SystemExit(f"time {text!r} has no offset (write Z for UTC)")
    return int(t.timestamp())


def arguments(engine):
    p = argparse.ArgumentParser(
        description=f"Per-user aggregates table (tiering schema v3) with {engine} and sql/."
    )
    p.add_argument("--events", required=True,
                   help="events: a Parquet file, a directory of Parquet files, or a glob")
    p.add_argument("--users", help="users table (user_id, registered_at), Parquet; optional")
    p.add_argument("--as-of", required=True,
                   help="score time: snapshots as_of - 2H, as_of - H and as_of are written")
    p.add_argument("--horizon-days", type=int, default=30)
    p.add_argument("--snapshot", action="append", default=[],
                   help="an extra snapshot time (repeatable)")
    p.add_argument("--out", required=True, help="output (DuckDB: a file; Spark: a directory)")
    return p


def snapshot_times(args):
    as_of = parse_time(args.as_of)
    h = args.horizon_days * DAY
    times = {as_of - 2 * h, as_of - h, as_of}
    times.update(parse_time(s) for s in args.snapshot)
    return sorted(times)


def created_view(stmt):
    """The name of the view a CREATE ... VIEW statement creates, else None."""
    m = re.match(r"CREATE\s+OR\s+REPLACE\s+TEMPORARY\s+VIEW\s+(\w+)", stmt, re.I)
    return m.group(1) if m else None


def statements(path):
    """The statements of one SQL file: comments dropped, split at `;` ending a line."""
    text = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")
    )
    return [s.strip() for s in re.split(r";\s*\n", text + "\n") if s.strip()]


def sql_files(engine):
    return [SQL_DIR / engine / "00_events.sql"] + [SQL_DIR / f for f in SHARED]
