"""lifetimes' BG/NBD on the orders of an events.csv (a generated live-commerce set, where users
watch for weeks before their first order), as of a bundle's as-of time: the reference for the
BG/NBD that `tiering train` fits there (`value.bgnbd` in the bundle's model.json) and its mean
P(alive) over the buyers (BENCHMARKS.md, issue 12, "the purchase summary from the first order").

  python bench/python/btyd_generated.py EVENTS_CSV AS_OF

AS_OF is the bundle's "scored as of" time (RFC 3339, UTC). The summary is lifetimes' own
(`summary_data_from_transaction_data`, freq="D"): orders strictly before AS_OF, T counted to the
day of AS_OF - 1 s, as tiering counts it; both count from the first *order*. Prints JSON.
"""
import json
import sys
import warnings

warnings.simplefilter("ignore")
import pandas as pd  # noqa: E402
from lifetimes import BetaGeoFitter  # noqa: E402
from lifetimes.utils import summary_data_from_transaction_data  # noqa: E402


def main(events: str, as_of: str) -> None:
    t = pd.Timestamp(as_of).tz_convert(None)
    ev = pd.read_csv(events, usecols=["user_id", "ts", "kind"])
    o = ev[ev["kind"] == "order"].copy()
    o["ts"] = pd.to_datetime(o["ts"], utc=True).dt.tz_convert(None)
    o = o[o["ts"] < t]
    o["day"] = o["ts"].dt.floor("D")
    end = (t - pd.Timedelta(seconds=1)).floor("D")
    s = summary_data_from_transaction_data(o, "user_id", "day", freq="D", observation_period_end=end)
    bg = BetaGeoFitter().fit(s["frequency"], s["recency"], s["T"])
    alive = bg.conditional_probability_alive(s["frequency"], s["recency"], s["T"])
    print(json.dumps({
        "buyers": len(s),
        "params": {k: float(v) for k, v in bg.params_.items()},
        "mean_p_alive": float(alive.mean()),
        "mean_T": float(s["T"].mean()),
        "mean_recency": float(s["recency"].mean()),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
