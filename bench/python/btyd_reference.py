"""Reference fits for src/model/btyd (tests and bench/compare.sh's CLV comparison).

  python bench/python/btyd_reference.py simulate OUT.csv   # the fixed test set (seed 7, 500 rows)
  python bench/python/btyd_reference.py fit IN.csv         # lifetimes' BG/NBD + Gamma-Gamma fit

The CSV has columns frequency,recency,T,monetary (lifetimes' summary: repeat purchases, time
from first to last purchase, time from first purchase to the end, mean order value of the
repeat purchases; 0 when frequency is 0). `fit` prints the parameters as JSON.
"""
import json
import sys

import numpy as np


def simulate(path, n=500, seed=7):
    rng = np.random.default_rng(seed)
    r, alpha, a, b = 0.24, 4.41, 0.79, 2.43
    p, q, v = 6.25, 3.74, 15.44
    rows = []
    for _ in range(n):
        big_t = float(rng.integers(10, 79))
        lam = rng.gamma(r, 1.0 / alpha)
        drop = rng.beta(a, b)
        t, times = 0.0, []
        while True:
            t += rng.exponential(1.0 / lam) if lam > 0 else np.inf
            if t > big_t:
                break
            times.append(t)
            if rng.random() < drop:
                break
        x = len(times)
        nu = rng.gamma(q, 1.0 / v)
        m = float(np.mean(rng.gamma(p, 1.0 / nu, size=x))) if x > 0 else 0.0
        rows.append((x, round(times[-1], 3) if x else 0.0, big_t, round(m, 3)))
    with open(path, "w") as f:
        f.write("frequency,recency,T,monetary\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")


def fit(path):
    import warnings

    warnings.simplefilter("ignore")
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    d = pd.read_csv(path)
    bg = BetaGeoFitter().fit(d["frequency"], d["recency"], d["T"], tol=1e-10)
    rep = d[d["frequency"] > 0]
    gg = GammaGammaFitter().fit(rep["frequency"], rep["monetary"])
    head = d.head(6)
    preds = {
        "p_alive": bg.conditional_probability_alive(head["frequency"], head["recency"], head["T"]).tolist(),
        "expected_purchases_12": bg.conditional_expected_number_of_purchases_up_to_time(
            12, head["frequency"], head["recency"], head["T"]).tolist(),
        "expected_order_value": gg.conditional_expected_average_profit(
            head["frequency"], head["monetary"]).tolist(),
        "clv_3_months_weekly_data": gg.customer_lifetime_value(
            bg, head["frequency"], head["recency"], head["T"], head["monetary"],
            time=3, discount_rate=0.01, freq="W").tolist(),
    }
    print(json.dumps({"predictions_first_6_rows": preds,
                      "bgnbd": {k: float(v) for k, v in bg.params_.items()},
                      "gamma_gamma": {k: float(v) for k, v in gg.params_.items()},
                      "bgnbd_ll": float(bg._negative_log_likelihood_),
                      "gg_ll": float(gg._negative_log_likelihood_)}))


if __name__ == "__main__":
    {"simulate": simulate, "fit": fit}[sys.argv[1]](sys.argv[2])
