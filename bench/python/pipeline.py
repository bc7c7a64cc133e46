#!/usr/bin/env python3
"""The Python stack doing the job of `tiering train`, for the training speed/memory comparison.

pandas + scikit-learn + LightGBM, the way a data scientist would write it in a notebook:
  1. read events.csv (+ users.csv)
  2. point-in-time features at A = as_of - 2H, B = as_of - H and as_of (features.py; the same
     definitions as tiering), labels = no order in [t, t + H)
  3. on snapshot A: StandardScaler, 80/20 split of users (by a hash of the id), LogisticRegression
     (lbfgs) and LightGBM (100 trees) on the 80 %, the better validation ROC-AUC is chosen and
     Platt-calibrated on the 20 % (CalibratedClassifierCV(FrozenEstimator, "sigmoid")); both are
     evaluated out of time on snapshot B
  4. the same refitted on snapshot B (the served model)
  5. KMeans with tiering's k on the scaled as_of features (fitted on up to 200,000 users, 3 runs,
     like tiering's defaults), then every user is given a tier and a churn probability
  6. writes scores.parquet and model.pkl (what bench/python/server.py serves)

`--parity EVAL_DIR` instead checks the features and labels of snapshots A and B against
tiering's `--export-eval` rows and exits non-zero on a mismatch (untimed, run once).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lightgbm import LGBMClassifier  # noqa: E402
from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import features as F  # noqa: E402

IMPORT_SECS = time.perf_counter() - T0


class Stages:
    def __init__(self):
        self.t = time.perf_counter()
        self.times: dict[str, float] = {"imports": IMPORT_SECS}

    def lap(self, name: str):
        now = time.perf_counter()
        self.times[name] = now - self.t
        self.t = now


def split_validation(user_ids: pd.Index, fraction: float = 0.2) -> np.ndarray:
    """True for validation users: a stable hash of the id, so reruns pick the same users."""
    h = pd.util.hash_array(np.asarray(user_ids, dtype=object)).astype(np.uint64)
    return (h % np.uint64(1000)) < np.uint64(fraction * 1000)


def fit_churn(x: pd.DataFrame, y: np.ndarray, seed: int):
    """Scaler + both candidates, the better one (validation ROC-AUC) Platt-calibrated."""
    scaler = StandardScaler().fit(x.to_numpy())
    xs = scaler.transform(x.to_numpy())
    val = split_validation(x.index)
    lr = LogisticRegression(max_iter=1000).fit(xs[~val], y[~val])
    gb = LGBMClassifier(n_estimators=100, random_state=seed, verbose=-1).fit(xs[~val], y[~val])
    aucs = {
        "logistic_regression": roc_auc_score(y[val], lr.decision_function(xs[val])),
        "lightgbm": roc_auc_score(y[val], gb.predict_proba(xs[val])[:, 1]),
    }
    models = {"logistic_regression": lr, "lightgbm": gb}
    chosen = max(aucs, key=aucs.get)
    calibrated = {
        name: CalibratedClassifierCV(FrozenEstimator(m), method="sigmoid").fit(xs[val], y[val])
        for name, m in models.items()
    }
    return scaler, calibrated, chosen, aucs


def run_pipeline(args) -> dict:
    st = Stages()
    ds = F.Dataset(args.data)
    st.lap("read")
    as_of = ds.last_ts() + 1
    h = args.horizon_days * F.DAY
    snap_b, snap_a = as_of - h, as_of - 2 * h
    rows_a, _, x_a, y_a = F.snapshot(ds, snap_a, args.horizon_days)
    rows_b, _, x_b, y_b = F.snapshot(ds, snap_b, args.horizon_days)
    _, raw_now, x_now, _ = F.snapshot(ds, as_of, None)
    st.lap("features+labels")

    # Out-of-time evaluation: fit on A, evaluate on B.
    scaler_a, cal_a, chosen, val_aucs = fit_churn(x_a, y_a, args.seed)
    xs_b = scaler_a.transform(x_b.to_numpy())
    eval_auc = {n: float(roc_auc_score(y_b, m.predict_proba(xs_b)[:, 1])) for n, m in cal_a.items()}
    st.lap("churn fit A + evaluation on B")
    # The served model: refit on B.
    scaler, cal_b, _, _ = fit_churn(x_b, y_b, args.seed)
    model = cal_b[chosen]
    st.lap("churn refit on B")

    # Tiers: k-means on the scaled as_of features.
    xs_now = scaler.transform(x_now.to_numpy())
    rng = np.random.default_rng(args.seed)
    fit_rows = (
        rng.choice(len(xs_now), size=args.fit_sample, replace=False)
        if len(xs_now) > args.fit_sample
        else np.arange(len(xs_now))
    )
    km = KMeans(n_clusters=args.k, n_init=3, max_iter=200, random_state=args.seed)
    km.fit(xs_now[fit_rows])
    tiers = km.predict(xs_now)
    st.lap("kmeans")

    prob = model.predict_proba(xs_now)[:, 1]
    st.lap("predict all users")

    os.makedirs(args.out, exist_ok=True)
    pd.DataFrame(
        {"user_id": x_now.index.astype(str), "tier": tiers.astype(np.int16), "churn_probability": prob}
    ).to_parquet(os.path.join(args.out, "scores.parquet"), index=False)
    # What the Python server serves: models + per-user transformed features as of as_of, and
    # the per-user rule-based views (RFM segment, lifecycle stage) computed here once.
    bundle = {
        "as_of": as_of,
        "feature_names": F.FEATURES,
        "user_ids": x_now.index.to_numpy(dtype=object),
        "x": x_now.to_numpy(dtype=np.float64),
        "scaler": scaler,
        "kmeans": km,
        "model": model,
        "model_name": chosen,
        "sorted_probabilities": np.sort(prob),
        "rfm_segment": rfm_segments(raw_now),
        "lifecycle_stage": lifecycle_stages(raw_now),
    }
    with open(os.path.join(args.out, "model.pkl"), "wb") as fh:
        pickle.dump(bundle, fh, protocol=pickle.HIGHEST_PROTOCOL)
    st.lap("write")
    return {
        "users": int(ds.n),
        "events": int(len(ds.events)),
        "rows_a": int(len(rows_a)),
        "rows_b": int(len(rows_b)),
        "chosen_model": chosen,
        "validation_auc": {k: float(v) for k, v in val_aucs.items()},
        "out_of_time_auc": eval_auc,
        "k": args.k,
        "stages": {k: round(v, 3) for k, v in st.times.items()},
        "total_in_process_secs": round(time.perf_counter() - T0, 3),
    }


def rfm_segments(raw: pd.DataFrame) -> np.ndarray:
    """The 8 classic RFM segments against the buyers' medians (as tiering's rule view)."""
    buyers = raw["frequency"] > 0
    r_med = raw.loc[buyers, "recency_days"].median()
    f_med = raw.loc[buyers, "frequency"].median()
    m_med = raw.loc[buyers, "monetary_total"].median()
    r = raw["recency_days"] <= r_med
    f = raw["frequency"] > f_med
    m = raw["monetary_total"] > m_med
    names = {
        (True, True, True): "important_value",
        (True, False, True): "important_develop",
        (False, True, True): "important_keep",
        (False, False, True): "important_retain",
        (True, True, False): "general_value",
        (True, False, False): "general_develop",
        (False, True, False): "general_keep",
        (False, False, False): "general_retain",
    }
    seg = [names[(a, b, c)] for a, b, c in zip(r, f, m)]
    return np.where(buyers, np.array(seg, dtype=object), "non_buyer")


def lifecycle_stages(raw: pd.DataFrame) -> np.ndarray:
    d, tenure = raw["days_since_activity"], raw["tenure_days"]
    return np.select(
        [d > 90, d > 30, d > 14, tenure < 30],
        ["churned", "about_to_churn", "silent", "new"],
        default="mature_active",
    ).astype(object)


def parity(args) -> int:
    """Compares this file's features and labels with tiering's exported rows."""
    meta = json.load(open(os.path.join(args.parity, "meta.json")))
    ds = F.Dataset(args.data)
    report = {}
    ok = True
    for name, snap in (("train", meta["train_snapshot"]), ("test", meta["test_snapshot"])):
        t = int(pd.Timestamp(snap).timestamp())
        _, _, x, y = F.snapshot(ds, t, meta["horizon_days"])
        ref = pd.read_csv(os.path.join(args.parity, f"{name}.csv"), index_col="user_id")
        same_rows = set(ref.index) == set(x.index)
        if not same_rows:
            ok = False
            report[name] = {"snapshot": snap, "same_users": False, "rows": len(ref), "ours": len(x)}
            continue
        y = pd.Series(y, index=x.index).loc[ref.index].to_numpy()
        x = x.loc[ref.index]
        labels_equal = bool((ref["churned"].to_numpy() == y).all())
        diffs = {f: float(np.max(np.abs(x[f].to_numpy() - ref[f].to_numpy()))) for f in F.FEATURES}
        # Distinct rooms/categories: tiering's sketch vs exact counts (log1p scale).
        mean_diffs = {f: float(np.mean(np.abs(x[f].to_numpy() - ref[f].to_numpy()))) for f in ("rooms", "categories")}
        exact = {f: d for f, d in diffs.items() if f not in ("rooms", "categories")}
        snap_ok = same_rows and labels_equal and max(exact.values()) < 1e-6
        ok &= snap_ok
        report[name] = {
            "snapshot": snap,
            "rows": len(ref),
            "same_users": same_rows,
            "labels_equal": labels_equal,
            "max_abs_diff_exact_features": max(exact.values()),
            "max_abs_diff": diffs,
            "mean_abs_diff_sketched": mean_diffs,
            "ok": snap_ok,
        }
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="output directory (scores.parquet, model.pkl)")
    p.add_argument("--k", type=int, help="number of tiers (use the k tiering chose)")
    p.add_argument("--horizon-days", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fit-sample", type=int, default=200_000)
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--parity", metavar="EVAL_DIR", help="check features against tiering's export")
    args = p.parse_args()
    if args.parity:
        return parity(args)
    if not args.out or not args.k:
        p.error("--out and --k are required")
    summary = run_pipeline(args)
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
