#!/usr/bin/env python3
"""Churn and clustering quality: tiering vs scikit-learn, LightGBM and lifetimes' BG/NBD.

Every method is scored on exactly the rows `tiering train --export-eval DIR` wrote:
  train.csv  users known at snapshot A = as_of - 2H, features from events before A,
             churned = no order in [A, A + H)
  test.csv   users known at snapshot B = as_of - H (labels from [B, as_of)), with tiering's
             calibrated probability (the served kind of model, fitted on A, out of time)
Features are tiering's (log1p except trend, not standardised). The Python models are fitted on
train.csv only; the tuned LightGBM's grid is searched on a validation split of train.csv.

BG/NBD (lifetimes) sees only the order log before B (events.csv, kind = order, ts < B),
summarised per customer in days as lifetimes expects (frequency = repeat purchase days,
recency = last - first purchase day, T = B's day - first purchase day). Its churn probability is
P(no purchase in the next H days) = (1 - P(alive)) + P(alive) * ((alpha+T)/(alpha+T+H))^(r+x)
(the gamma-Poisson posterior of the purchase rate given alive). Users with no order before B are
not in BG/NBD's model: they get the share of non-buyers at A who churned (from train.csv: known
before B, no test label used). Both the all-users figure and the buyers-only figure (with every
other method on the same buyers) are reported.

Clustering: tiers.csv, the rows tiering's k-means clustered (every user known at as_of, standardised
with the served scaler, exactly as k-means saw them) and each row's tier in the bundle. tiering's
inertia is measured with its bundle's centroids (model.json); scikit-learn KMeans (k-means++, 3
inits like tiering's 3 runs, 200 iterations) is fitted on the same rows with the same k, so both
are in sample (tiering fits its centroids on a keyed 200,000-row sample of these rows, then
assigns every row; scikit-learn fits on all of them). Silhouette on one 5,000-row sample (the same
rows for both), inertia (mean squared distance to the assigned centroid) on all rows, and the
adjusted Rand index against the generator's personas.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

try:  # lifetimes sets a pandas option that pandas 3 deprecates
    warnings.filterwarnings("ignore", category=pd.errors.Pandas4Warning)
except AttributeError:
    pass
from lifetimes import BetaGeoFitter  # noqa: E402
from lifetimes.utils import ConvergenceError, summary_data_from_transaction_data  # noqa: E402
from lightgbm import LGBMClassifier, early_stopping  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    adjusted_rand_score,
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
    silhouette_score,
)
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

DAY = 86_400


def metrics(y: np.ndarray, p: np.ndarray) -> dict:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return {
        "n": int(len(y)),
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
    }


def validation_mask(ids: pd.Index, fraction: float = 0.2) -> np.ndarray:
    h = pd.util.hash_array(np.asarray(ids, dtype=object)).astype(np.uint64)
    return (h % np.uint64(1000)) < np.uint64(fraction * 1000)


def tuned_lightgbm(x: np.ndarray, y: np.ndarray, ids: pd.Index, seed: int):
    """Small grid on a validation split of the TRAIN rows; early stopping picks the trees."""
    val = validation_mask(ids)
    grid = [
        dict(num_leaves=nl, learning_rate=lr, min_child_samples=mcs)
        for nl in (15, 31, 63)
        for lr in (0.05, 0.1)
        for mcs in (20, 200)
    ]
    tried = []
    for params in grid:
        m = LGBMClassifier(n_estimators=2000, random_state=seed, verbose=-1, n_jobs=1, **params)
        m.fit(
            x[~val],
            y[~val],
            eval_set=[(x[val], y[val])],
            eval_metric="auc",
            callbacks=[early_stopping(50, first_metric_only=True, verbose=False)],
        )
        auc = roc_auc_score(y[val], m.predict_proba(x[val])[:, 1])
        tried.append((auc, params, int(m.best_iteration_ or m.n_estimators)))
    auc, params, trees = max(tried, key=lambda t: t[0])
    final = LGBMClassifier(n_estimators=trees, random_state=seed, verbose=-1, n_jobs=1, **params).fit(x, y)
    return final, {"params": params, "n_estimators": trees, "validation_auc": float(auc), "grid_size": len(grid)}


def bgnbd(data_dir: str, snapshot: int, horizon_days: int, check_users: int = 2000):
    """BG/NBD fitted on orders before `snapshot`; returns (per-user P(churn) Series, info)."""
    ev = pd.read_csv(
        os.path.join(data_dir, "events.csv"), usecols=["user_id", "ts", "kind"], engine="pyarrow"
    )
    ev = ev[ev["kind"].str.lower() == "order"]
    ts = ev["ts"]
    if not pd.api.types.is_datetime64_any_dtype(ts):
        ts = pd.to_datetime(ts, utc=True, format="ISO8601")
    secs = ts.dt.as_unit("s").astype("int64")
    tx = pd.DataFrame({"user_id": ev["user_id"].to_numpy(), "ts": ts.to_numpy(), "secs": secs.to_numpy()})
    tx = tx[tx["secs"] < snapshot]
    # lifetimes' summary in days (freq="D"), vectorised for large logs...
    day = tx["secs"] // DAY
    g = pd.DataFrame({"user_id": tx["user_id"].to_numpy(), "day": day.to_numpy()}).groupby("user_id")["day"]
    end_day = snapshot // DAY
    summary = pd.DataFrame(
        {"frequency": g.nunique() - 1, "recency": g.max() - g.min(), "T": end_day - g.min()}
    ).astype(float)
    # ...checked against lifetimes' own summary_data_from_transaction_data on a subset.
    some = summary.index[:check_users]
    end = pd.Timestamp(snapshot, unit="s", tz="UTC")
    ref = summary_data_from_transaction_data(
        tx[tx["user_id"].isin(some)], "user_id", "ts", observation_period_end=end, freq="D"
    )
    diff = (ref[["frequency", "recency", "T"]] - summary.loc[ref.index]).abs().to_numpy().max()
    if diff > 1e-9:
        raise SystemExit(f"BG/NBD summary differs from lifetimes' own by {diff}")

    # Fit on the distinct (frequency, recency, T) triples with weights: same likelihood, faster.
    triples = summary.groupby(["frequency", "recency", "T"]).size().rename("w").reset_index()
    started = time.perf_counter()
    penalizer = 0.0
    for penalizer in (0.0, 0.001, 0.01):
        try:
            bg = BetaGeoFitter(penalizer_coef=penalizer)
            bg.fit(triples["frequency"], triples["recency"], triples["T"], weights=triples["w"])
            break
        except ConvergenceError:
            continue
    else:
        raise SystemExit("BG/NBD did not converge")
    fit_secs = time.perf_counter() - started
    x, tx_, T = summary["frequency"], summary["recency"], summary["T"]
    p_alive = bg.conditional_probability_alive(x, tx_, T)
    r, alpha = bg.params_["r"], bg.params_["alpha"]
    h = float(horizon_days)
    p_none_if_alive = ((alpha + T) / (alpha + T + h)) ** (r + x)
    p_churn = (1.0 - p_alive) + p_alive * p_none_if_alive
    info = {
        "customers": int(len(summary)),
        "orders_before_snapshot": int(len(tx)),
        "distinct_triples": int(len(triples)),
        "penalizer": penalizer,
        "params": {k: float(v) for k, v in bg.params_.items()},
        "fit_secs": round(fit_secs, 3),
        "summary_checked_users": int(len(ref)),
    }
    return pd.Series(np.asarray(p_churn, dtype=float), index=summary.index), info


def clustering(eval_dir: str, feats: list[str], model_json: dict, personas, seed: int, sample: int):
    rows = pd.read_csv(os.path.join(eval_dir, "tiers.csv"), dtype={"user_id": str}).set_index("user_id")
    x = rows[feats].to_numpy()
    tiers = model_json["tiers"]
    k, d = len(tiers["tiers"]), tiers["dims"]
    if d != len(feats):
        raise SystemExit(f"model.json has {d} tier dimensions, tiers.csv {len(feats)} features")
    cent = np.asarray(tiers["centroids"]).reshape(k, d)

    def sq_dist(c):  # rows x k, one centroid at a time (bounded memory at 1M rows)
        return np.stack([((x - c[j]) ** 2).sum(axis=1) for j in range(len(c))], axis=1)

    t_lab = rows["tier"].to_numpy()
    d_t = sq_dist(cent)
    # The export is the bundle's assignment: check it is the nearest centroid (9-decimal rounding
    # may flip a row sitting on a boundary, nothing more).
    mismatch = int((d_t.argmin(axis=1) != t_lab).sum())
    if mismatch > max(1, len(x) // 10000):
        raise SystemExit(f"tiers.csv: {mismatch} rows are not at their tier's nearest centroid")
    t_inertia = float(d_t[np.arange(len(x)), t_lab].mean())
    started = time.perf_counter()
    km = KMeans(n_clusters=k, n_init=3, max_iter=200, random_state=seed).fit(x)
    km_secs = time.perf_counter() - started
    d_s = sq_dist(km.cluster_centers_)
    s_lab = d_s.argmin(axis=1)
    s_inertia = float(d_s[np.arange(len(x)), s_lab].mean())
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    out = {
        "rows": int(len(x)),
        "k": k,
        "silhouette_sample": int(len(idx)),
        "ari_between": float(adjusted_rand_score(t_lab, s_lab)),
        "sklearn_fit_secs": round(km_secs, 3),
        "nearest_centroid_mismatches": mismatch,
        "methods": {},
    }
    p = personas.reindex(rows.index) if personas is not None else None
    for name, lab, inertia in (("tiering", t_lab, t_inertia), ("sklearn_kmeans", s_lab, s_inertia)):
        m = {
            "silhouette": float(silhouette_score(x[idx], lab[idx])),
            "inertia_per_row": inertia,
            "sizes": np.bincount(lab, minlength=k).tolist(),
        }
        if p is not None and p.notna().any():
            ok = p.notna().to_numpy()
            m["ari_vs_personas"] = float(adjusted_rand_score(p[ok].to_numpy(), lab[ok]))
        out["methods"][name] = m
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", required=True, help="tiering's --export-eval directory")
    ap.add_argument("--data", required=True, help="the data directory (events.csv, users.csv)")
    ap.add_argument("--models", required=True, help="tiering's models directory (CURRENT)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--silhouette-sample", type=int, default=5000)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    meta = json.load(open(os.path.join(args.eval, "meta.json")))
    version = open(os.path.join(args.models, "CURRENT")).read().strip()
    bundle = os.path.join(args.models, version)
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    model_json = json.load(open(os.path.join(bundle, "model.json")))
    if manifest["version"] != meta["version"]:
        raise SystemExit(f"models/CURRENT is {manifest['version']}, the export is {meta['version']}")
    feats = [f["name"] for f in meta["features"]]
    train = pd.read_csv(os.path.join(args.eval, "train.csv"), index_col="user_id")
    test = pd.read_csv(os.path.join(args.eval, "test.csv"), index_col="user_id")
    xtr, ytr = train[feats].to_numpy(), train["churned"].to_numpy()
    xte, yte = test[feats].to_numpy(), test["churned"].to_numpy()
    buyers = test["frequency"].to_numpy() > 0

    probs: dict[str, np.ndarray] = {"tiering": test["tiering_probability"].to_numpy()}
    fit_secs: dict[str, float] = {}
    t = time.perf_counter()
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(xtr, ytr)
    fit_secs["sklearn_logistic"] = time.perf_counter() - t
    probs["sklearn_logistic"] = lr.predict_proba(xte)[:, 1]
    t = time.perf_counter()
    gb = LGBMClassifier(random_state=args.seed, verbose=-1, n_jobs=1).fit(xtr, ytr)
    fit_secs["lightgbm_default"] = time.perf_counter() - t
    probs["lightgbm_default"] = gb.predict_proba(xte)[:, 1]
    t = time.perf_counter()
    gbt, tuned_info = tuned_lightgbm(xtr, ytr, train.index, args.seed)
    fit_secs["lightgbm_tuned"] = time.perf_counter() - t
    probs["lightgbm_tuned"] = gbt.predict_proba(xte)[:, 1]

    snap_b = int(pd.Timestamp(meta["test_snapshot"]).timestamp())
    bg_churn, bg_info = bgnbd(args.data, snap_b, meta["horizon_days"])
    nonbuyer_rate = float(train.loc[train["frequency"] == 0, "churned"].mean())
    bg_all = bg_churn.reindex(test.index)
    bg_buyer_ids = set(bg_churn.index)
    test_buyer_ids = set(test.index[buyers])
    bg_info["nonbuyer_probability"] = nonbuyer_rate
    bg_info["test_buyers"] = int(buyers.sum())
    bg_info["test_buyers_match_bgnbd_customers"] = test_buyer_ids <= bg_buyer_ids
    probs["bgnbd"] = bg_all.fillna(nonbuyer_rate).to_numpy()

    results = {
        "all": {name: metrics(yte, p) for name, p in probs.items()},
        "buyers": {name: metrics(yte[buyers], p[buyers]) for name, p in probs.items()},
    }
    personas = None
    users_csv = os.path.join(args.data, "users.csv")
    if os.path.exists(users_csv):
        u = pd.read_csv(users_csv)
        if "persona" in u.columns:
            personas = u.set_index("user_id")["persona"]
    clus = clustering(args.eval, feats, model_json, personas, args.seed, args.silhouette_sample)
    out = {
        "meta": {
            k: meta[k]
            for k in ("version", "as_of", "horizon_days", "train_snapshot", "test_snapshot", "evaluation", "chosen_model")
        },
        "rows": {
            "train": int(len(train)),
            "test": int(len(test)),
            "test_churn_rate": float(yte.mean()),
            "test_buyers": int(buyers.sum()),
            "test_buyers_churn_rate": float(yte[buyers].mean()),
        },
        "tiering_reported": {m["name"]: m["metrics"] for m in manifest["metrics"]["models"]},
        "churn": results,
        "fit_secs": {k: round(v, 3) for k, v in fit_secs.items()},
        "lightgbm_tuned": tuned_info,
        "bgnbd": bg_info,
        "clustering": clus,
        "tiering_clustering_reported": {
            "k": manifest["metrics"]["k"],
            "k_scores": manifest["metrics"].get("k_scores"),
            "inertia": manifest["metrics"].get("inertia"),
            "ari_vs_personas": manifest["metrics"].get("tier_ari"),
        },
    }
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=1)
    w = max(len(n) for n in probs)
    for subset in ("all", "buyers"):
        print(f"{subset}: {results[subset]['tiering']['n']} rows")
        for name, m in results[subset].items():
            print(f"  {name:<{w}} ROC-AUC {m['roc_auc']:.4f}  PR-AUC {m['pr_auc']:.4f}  Brier {m['brier']:.4f}  log loss {m['log_loss']:.4f}")
    for name, m in clus["methods"].items():
        print(f"  {name:<{w}} silhouette {m['silhouette']:.4f}  inertia/row {m['inertia_per_row']:.4f}  ARI(personas) {m.get('ari_vs_personas', float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
