"""Point-in-time features in pandas: the same definitions as tiering's `src/features/`.

A snapshot at `t` sees events with `ts < t` only. Per user (see training/README.md):
recency_days, frequency (orders), monetary_total, monetary_avg, tenure_days,
days_since_activity, watch_minutes, sessions, comments, likes, shares, rooms, categories
(distinct), trend = ln((events in the last 4 calendar weeks + 1) / (events in the 4 before + 1)).
All but `trend` are log1p-transformed. Labels: churned at t = no order in [t, t + H).

One deliberate difference: tiering estimates distinct rooms / categories with a 64-bit
linear-counting sketch (constant memory per user, a few % error on small counts); pandas counts
them exactly with `nunique`. `pipeline.py --parity` measures the difference.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

DAY = 86_400
WEEK = 7 * DAY
FEATURES = [
    "recency_days",
    "frequency",
    "monetary_total",
    "monetary_avg",
    "tenure_days",
    "days_since_activity",
    "watch_minutes",
    "sessions",
    "comments",
    "likes",
    "shares",
    "rooms",
    "categories",
    "trend",
]
LOG1P = [f for f in FEATURES if f != "trend"]
COUNTED_KINDS = ["comment", "like", "share"]


def _seconds(col: pd.Series) -> np.ndarray:
    """Timestamps (already parsed by the pyarrow reader, or strings) as int64 Unix seconds."""
    if not pd.api.types.is_datetime64_any_dtype(col):
        col = pd.to_datetime(col, utc=True, format="ISO8601")
    return col.dt.as_unit("s").astype("int64").to_numpy()


class Dataset:
    """events.csv (+ users.csv) with users as dense integer codes."""

    def __init__(self, data_dir: str):
        ev = pd.read_csv(os.path.join(data_dir, "events.csv"), engine="pyarrow")
        users_path = os.path.join(data_dir, "users.csv")
        users = pd.read_csv(users_path, engine="pyarrow") if os.path.exists(users_path) else None
        ids = ev["user_id"]
        if users is not None:
            ids = pd.concat([users["user_id"], ids], ignore_index=True)
        codes, uniques = pd.factorize(ids)
        n_users_rows = 0 if users is None else len(users)
        self.user_ids = np.asarray(uniques, dtype=object)
        self.n = len(uniques)
        self.registered = np.full(self.n, np.iinfo(np.int64).min, dtype=np.int64)
        if users is not None:
            reg = _seconds(users["registered_at"])
            self.registered[codes[:n_users_rows]] = reg
            self.personas = (
                pd.Series(users["persona"].to_numpy(), index=users["user_id"].to_numpy())
                if "persona" in users.columns
                else None
            )
        else:
            self.personas = None
        self.events = pd.DataFrame(
            {
                "uid": codes[n_users_rows:].astype(np.int64),
                "ts": _seconds(ev["ts"]),
                "kind": ev["kind"].str.lower().astype("category"),
                "amount": ev["amount"].fillna(0.0).to_numpy(),
                "watch": ev["watch_seconds"].fillna(0).to_numpy(),
                "room": pd.factorize(ev["room_id"])[0] if "room_id" in ev else -1,
                "cat": pd.factorize(ev["category"])[0] if "category" in ev else -1,
            }
        )
        del ev

    def last_ts(self) -> int:
        return int(self.events["ts"].max())


def aggregates(ds: Dataset, t: int) -> pd.DataFrame:
    """Per-user aggregates from events strictly before t, indexed by user code (all users)."""
    e = ds.events[ds.events["ts"] < t]
    idx = pd.RangeIndex(ds.n)
    g = e.groupby("uid")
    agg = g.agg(first_seen=("ts", "min"), last_activity=("ts", "max"))
    # factorize gives -1 for a missing room/category: not a distinct value.
    agg["rooms"] = e[e["room"] >= 0].groupby("uid")["room"].nunique()
    agg["categories"] = e[e["cat"] >= 0].groupby("uid")["cat"].nunique()
    orders = e[e["kind"] == "order"].groupby("uid").agg(
        orders=("ts", "size"), spend=("amount", "sum"), last_order=("ts", "max")
    )
    views = e[e["kind"] == "view"].groupby("uid").agg(
        sessions=("ts", "size"), watch=("watch", "sum")
    )
    counts = (
        e[e["kind"].isin(COUNTED_KINDS)]
        .groupby(["uid", "kind"], observed=True)
        .size()
        .unstack(fill_value=0)
        .reindex(columns=COUNTED_KINDS, fill_value=0)
    )
    age_weeks = t // WEEK - e["ts"] // WEEK
    recent = e[age_weeks < 4].groupby("uid").size().rename("recent")
    prior = e[(age_weeks >= 4) & (age_weeks < 8)].groupby("uid").size().rename("prior")
    out = pd.concat([agg, orders, views, counts, recent, prior], axis=1).reindex(idx)
    return out


def known_mask(ds: Dataset, agg: pd.DataFrame, t: int) -> np.ndarray:
    """Known at t: active before t, or registered before t."""
    active = agg["last_activity"].notna().to_numpy()
    registered = (ds.registered != np.iinfo(np.int64).min) & (ds.registered < t)
    return active | registered


def feature_frame(ds: Dataset, agg: pd.DataFrame, t: int, rows: np.ndarray) -> pd.DataFrame:
    """Original-unit features as of t for the user codes in `rows`."""
    a = agg.iloc[rows]
    reg = ds.registered[rows].astype(np.float64)
    reg[ds.registered[rows] == np.iinfo(np.int64).min] = np.nan
    first = a["first_seen"].to_numpy(dtype=np.float64)
    start = np.fmin(reg, first)  # NaN-ignoring min: registration, else first event

    def days_since(ts: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(ts), 0.0, np.maximum((t - ts) / DAY, 0.0))

    tenure = days_since(start)
    last_order = a["last_order"].to_numpy(dtype=np.float64)
    last_act = a["last_activity"].to_numpy(dtype=np.float64)
    orders = a["orders"].fillna(0).to_numpy(dtype=np.float64)
    spend = a["spend"].fillna(0.0).to_numpy(dtype=np.float64)
    f = pd.DataFrame(
        {
            "recency_days": np.where(np.isnan(last_order), tenure, days_since(last_order)),
            "frequency": orders,
            "monetary_total": spend,
            "monetary_avg": np.divide(spend, orders, out=np.zeros_like(spend), where=orders > 0),
            "tenure_days": tenure,
            "days_since_activity": np.where(np.isnan(last_act), tenure, days_since(last_act)),
            "watch_minutes": a["watch"].fillna(0).to_numpy(dtype=np.float64) / 60.0,
            "sessions": a["sessions"].fillna(0).to_numpy(dtype=np.float64),
            "comments": a["comment"].fillna(0).to_numpy(dtype=np.float64),
            "likes": a["like"].fillna(0).to_numpy(dtype=np.float64),
            "shares": a["share"].fillna(0).to_numpy(dtype=np.float64),
            "rooms": a["rooms"].fillna(0).to_numpy(dtype=np.float64),
            "categories": a["categories"].fillna(0).to_numpy(dtype=np.float64),
            "trend": np.log(a["recent"].fillna(0).to_numpy(dtype=np.float64) + 1.0)
            - np.log(a["prior"].fillna(0).to_numpy(dtype=np.float64) + 1.0),
        },
        index=ds.user_ids[rows],
    )
    return f


def transform(f: pd.DataFrame) -> pd.DataFrame:
    """log1p on every feature but trend (what tiering does before scaling)."""
    out = f.copy()
    out[LOG1P] = np.log1p(np.maximum(out[LOG1P].to_numpy(), 0.0))
    return out


def churn_labels(ds: Dataset, t: int, horizon_days: int, rows: np.ndarray) -> np.ndarray:
    """1 = no order in [t, t + H)."""
    e = ds.events
    in_window = (e["ts"] >= t) & (e["ts"] < t + horizon_days * DAY) & (e["kind"] == "order")
    ordered = np.zeros(ds.n, dtype=bool)
    ordered[e.loc[in_window, "uid"].to_numpy()] = True
    return (~ordered[rows]).astype(np.int8)


def snapshot(ds: Dataset, t: int, horizon_days: int | None):
    """(user codes known at t, original-unit features, transformed features, labels or None)."""
    agg = aggregates(ds, t)
    rows = np.flatnonzero(known_mask(ds, agg, t))
    raw = feature_frame(ds, agg, t, rows)
    y = churn_labels(ds, t, horizon_days, rows) if horizon_days is not None else None
    return rows, raw, transform(raw), y
