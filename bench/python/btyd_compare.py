"""tiering's BG/NBD + Gamma-Gamma and value figures against `lifetimes` on a public real
transaction log: CDNOW (23,570 customers, 1997-01..1998-06, orders only), as shipped in the
`lifetimes` wheel (read from the installed package; nothing is committed).

  python bench/python/btyd_compare.py --bin target/release/tiering --work DIR --json OUT.json

Per cutoff (two out-of-time protocols, horizon H = 90 days): the transactions up to the cutoff
are written as tiering events (user_id, ts, kind=order, amount) and `tiering train --as-of
CUTOFF` fits the bundle; its scores.parquet holds every user's clv, expected_orders, p_alive,
churn_probability and value_at_risk at the cutoff. On exactly the same per-user summaries
(frequency = order days - 1, recency and T in days, monetary = spend / order days and the
repeat mean = spend of the order days after the first / frequency, as tiering reads them off
its aggregates) `lifetimes` fits BG/NBD and Gamma-Gamma on the basis the bundle records
(`value.basis`): `repeat_orders`, the default, count = frequency and the repeat mean over the
buyers with a repeat day (lifetimes' standard model), or `all_orders`, every buyer with spend,
count = frequency + 1 and the mean over all order days); parameters and per-user
predictions are compared (tolerance: 2% relative on parameters, per-user figures within 2% or
0.01 absolute for 99% of users). Then against what happened in the H days after the cutoff:
- CLV: Spearman rank correlation of predicted and realised spend, tiering vs lifetimes' own
  standard setup (monetary = mean of the repeat purchases);
- top 10% by CLV: share of all realised spend they hold (tiering vs lifetimes);
- value ranking: per user who then churned (no order in the horizon), lost value = their spend in
  the H days before the cutoff; share of all lost value in the top 10% ordered by value at risk
  vs ordered by churn probability;
- churn (no order in H): ROC-AUC and Brier of tiering's served probability, of logistic
  regression on RFM and of LightGBM on RFM (both fitted out of time: features at cutoff - H,
  labels in the H days up to the cutoff), and of BG/NBD's P(no purchase in H) (approximated
  by exp(-E[purchases in H]): lifetimes 0.11.3 has no conditional P(N = 0) for BG/NBD).
"""
import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.simplefilter("ignore")

H = 90
CUTOFFS = ["1997-09-30", "1997-12-31"]


def cdnow():
    import lifetimes

    path = Path(lifetimes.__file__).parent / "datasets" / "CDNOW_master.txt"
    d = pd.read_csv(path, sep=r"\s+", header=0, names=["customer", "date", "cds", "value"],
                    dtype={"customer": str, "date": str})
    d["date"] = pd.to_datetime(d["date"], format="%Y%m%d")
    return d


def summary(tx, cutoff):
    """Per user as tiering reads its aggregates (days; spend / order days)."""
    t = tx[tx["date"] <= cutoff]
    g = t.groupby("customer")
    first, last = g["date"].min(), g["date"].max()
    days = g["date"].nunique()
    first_day = t[t["date"] == t["customer"].map(first)].groupby("customer")["value"].sum()
    repeat = (g["value"].sum() - first_day).clip(lower=0)
    out = pd.DataFrame({
        "frequency": (days - 1).astype(float),
        "recency": (last - first).dt.days.astype(float),
        "T": (cutoff - first).dt.days.astype(float),
        "monetary": g["value"].sum().clip(lower=0) / days,
        "repeat_monetary": (repeat / (days - 1).where(days > 1)).fillna(0.0),
        "spend_before": t[t["date"] > cutoff - pd.Timedelta(days=H)].groupby("customer")["value"].sum(),
    })
    out["spend_before"] = out["spend_before"].fillna(0.0)
    return out


def realised(tx, cutoff, users):
    w = tx[(tx["date"] > cutoff) & (tx["date"] <= cutoff + pd.Timedelta(days=H))]
    spend = w.groupby("customer")["value"].sum().reindex(users).fillna(0.0)
    bought = w.groupby("customer").size().reindex(users).fillna(0) > 0
    return spend, bought


def write_events(tx, cutoff, path):
    t = tx[tx["date"] <= cutoff]
    ev = pd.DataFrame({
        "user_id": "c" + t["customer"],
        "ts": t["date"].dt.strftime("%Y-%m-%dT12:00:00Z"),
        "kind": "order",
        "amount": t["value"].round(2),
    })
    path.mkdir(parents=True, exist_ok=True)
    ev.to_csv(path / "events.csv", index=False)


def top_share(order_by, amount, frac=0.1):
    n = max(1, int(round(frac * len(order_by))))
    idx = np.argsort(-np.asarray(order_by), kind="stable")[:n]
    total = float(np.sum(amount))
    return float(np.sum(np.asarray(amount)[idx]) / total) if total > 0 else float("nan")


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def rfm_features(s):
    return np.column_stack([s["recency"], s["T"] - s["recency"], s["frequency"],
                            np.log1p(s["monetary"]), s["T"]])


def churn_baselines(tx, cutoff, s_now, churned_now):
    """LR and LightGBM on RFM, fitted out of time, and BG/NBD's P(no purchase in H)."""
    from lifetimes import BetaGeoFitter
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from sklearn.preprocessing import StandardScaler
    import lightgbm as lgb

    earlier = cutoff - pd.Timedelta(days=H)
    s_fit = summary(tx, earlier)
    _, bought = realised(tx, earlier, s_fit.index)
    y_fit = (~bought).astype(int).values
    x_fit, x_now = rfm_features(s_fit), rfm_features(s_now)
    sc = StandardScaler().fit(x_fit)
    lr = LogisticRegression(max_iter=1000).fit(sc.transform(x_fit), y_fit)
    gbm = lgb.LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=15,
                             random_state=42, verbose=-1).fit(x_fit, y_fit)
    bg = BetaGeoFitter().fit(s_now["frequency"], s_now["recency"], s_now["T"])
    # lifetimes 0.11.3's BetaGeoFitter has no conditional P(N = 0): exp(-E[Y(H) | x, t_x, T])
    # (the Poisson approximation; the ranking, hence the AUC, is that of E[Y]).
    p_none = np.exp(-np.asarray(bg.conditional_expected_number_of_purchases_up_to_time(
        H, s_now["frequency"], s_now["recency"], s_now["T"]), dtype=float))
    y = churned_now.astype(int).values
    out = {}
    for name, p in [("logistic_rfm", lr.predict_proba(sc.transform(x_now))[:, 1]),
                    ("lightgbm_rfm", gbm.predict_proba(x_now)[:, 1]),
                    ("bgnbd_p_no_purchase", np.clip(np.asarray(p_none, dtype=float), 0, 1))]:
        out[name] = {"auc": float(roc_auc_score(y, p)), "brier": float(brier_score_loss(y, p))}
    return out


def protocol(tx, cutoff_s, args):
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from scipy.stats import spearmanr

    cutoff = pd.Timestamp(cutoff_s)
    work = Path(args.work) / cutoff_s
    write_events(tx, cutoff, work / "data")
    models = work / "models"
    # CDNOW is from 1997: the default earliest accepted event time (2000) would refuse it.
    (work / "train.toml").write_text('earliest_event_time = "1990-01-01"\n')
    cmd = [args.bin, "train", "--data", str(work / "data"), "--models", str(models),
           "--as-of", cutoff_s, "--horizon-days", str(H), "--config", str(work / "train.toml")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"tiering train failed:\n{r.stdout}\n{r.stderr}")
    current = (models / "CURRENT").read_text().strip()
    bundle = models / current
    value = json.loads((bundle / "model.json").read_text())["value"]
    scores = pd.read_parquet(bundle / "scores.parquet")
    scores["customer"] = scores["user_id"].str[1:]
    scores = scores.set_index("customer")

    s = summary(tx, cutoff)
    s = s.loc[s.index.intersection(scores.index)]
    sc = scores.loc[s.index]
    bg = BetaGeoFitter().fit(s["frequency"], s["recency"], s["T"])
    # The bundle's basis: repeat orders (n = frequency, the repeat mean, buyers with a repeat
    # day) or all orders (every buyer with spend, n = frequency + 1 order days).
    basis = value.get("basis", "unrecorded")
    if basis == "repeat_orders":
        count, mean = s["frequency"], s["repeat_monetary"]
        spent = (count > 0) & (mean > 0)
    else:
        count, mean = s["frequency"] + 1, s["monetary"]
        spent = mean > 0
    gg = GammaGammaFitter().fit(count[spent], mean[spent])
    ours_bg, ours_gg = value["bgnbd"], value["gamma_gamma"]
    params = {k: {"tiering": ours_bg[k], "lifetimes": float(bg.params_[k])} for k in "r alpha a b".split()}
    params.update({k: {"tiering": ours_gg[k], "lifetimes": float(gg.params_[k])} for k in "p q v".split()})
    # lifetimes' predictions at its own parameters on the same summaries.
    lt_alive = bg.conditional_probability_alive(s["frequency"], s["recency"], s["T"])
    lt_orders = bg.conditional_expected_number_of_purchases_up_to_time(H, s["frequency"], s["recency"], s["T"])
    # customer_lifetime_value's sum, with the basis' n and mean.
    ev = gg.conditional_expected_average_profit(count, mean)
    lt_clv, before = 0.0, 0.0
    for i in range(30, (H // 30) * 30 + 1, 30):
        cum = bg.conditional_expected_number_of_purchases_up_to_time(i, s["frequency"], s["recency"], s["T"])
        lt_clv = lt_clv + ev * (cum - before) / (1 + value["monthly_discount"]) ** (i / 30)
        before = cum

    def agree(ours, theirs):
        ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
        ok = np.abs(ours - theirs) <= np.maximum(0.02 * np.abs(theirs), 0.01)
        return {"share_within": float(ok.mean()),
                "max_abs_diff": float(np.max(np.abs(ours - theirs)))}

    predictions = {"p_alive": agree(sc["p_alive"], lt_alive),
                   "expected_orders": agree(sc["expected_orders"], lt_orders),
                   "clv": agree(sc["clv"], lt_clv)}
    # lifetimes' standard setup (monetary = mean of the repeat purchases, same-day merged).
    from lifetimes.utils import summary_data_from_transaction_data
    std = summary_data_from_transaction_data(tx[tx["date"] <= cutoff], "customer", "date",
                                             monetary_value_col="value", observation_period_end=cutoff,
                                             freq="D").loc[s.index]
    bg2 = BetaGeoFitter().fit(std["frequency"], std["recency"], std["T"])
    rep2 = std[(std["frequency"] > 0) & (std["monetary_value"] > 0)]
    gg2 = GammaGammaFitter().fit(rep2["frequency"], rep2["monetary_value"])
    std_clv = gg2.customer_lifetime_value(bg2, std["frequency"], std["recency"], std["T"],
                                          std["monetary_value"], time=H // 30,
                                          discount_rate=value["monthly_discount"], freq="D")
    spend, bought = realised(tx, cutoff, s.index)
    churned = ~bought
    lost = np.where(churned, s["spend_before"], 0.0)
    quality = {
        "spearman_clv": {"tiering": float(spearmanr(sc["clv"], spend)[0]),
                         "lifetimes": float(spearmanr(std_clv, spend)[0])},
        "top10_spend_share": {"tiering": top_share(sc["clv"].values, spend.values),
                              "lifetimes": top_share(np.asarray(std_clv), spend.values)},
        "top10_lost_value_share": {"by_value_at_risk": top_share(sc["value_at_risk"].values, lost),
                                   "by_churn_probability": top_share(sc["churn_probability"].values, lost)},
    }
    y = churned.astype(int).values
    churn = {"tiering": {"auc": float(roc_auc_score(y, sc["churn_probability"])),
                         "brier": float(brier_score_loss(y, sc["churn_probability"]))}}
    churn.update(churn_baselines(tx, cutoff, s, churned))
    return {"cutoff": cutoff_s, "horizon_days": H, "customers": int(len(s)), "basis": basis,
            "churn_rate": float(churned.mean()), "params": params,
            "params_within_2pct": all(rel(v["tiering"], v["lifetimes"]) <= 0.02 for v in params.values()),
            "predictions": predictions, "quality": quality, "churn": churn}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    tx = cdnow()
    out = {"data": "CDNOW_master (lifetimes wheel)", "transactions": int(len(tx)),
           "protocols": [protocol(tx, c, args) for c in CUTOFFS]}
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
