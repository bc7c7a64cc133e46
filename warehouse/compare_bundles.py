"""Compares the current bundles of two models directories: every user's tier in the scored
snapshot (scores.parquet) and each candidate model's ROC-AUC (manifest.json, within 1e-6).
Exits 1 on any difference.

    python warehouse/compare_bundles.py models_from_events models_from_table
"""

import json
import pathlib
import sys

import duckdb


def current(models):
    d = pathlib.Path(models)
    return d / (d / "CURRENT").read_text().strip()


def main(a, b):
    da, db = current(a), current(b)
    con = duckdb.connect()
    n, differ = con.execute(
        f"SELECT COUNT(*), COUNT(*) FILTER (WHERE x.tier_id IS DISTINCT FROM y.tier_id) "
        f"FROM read_parquet('{da}/scores.parquet') x "
        f"FULL JOIN read_parquet('{db}/scores.parquet') y USING (user_id)").fetchone()
    print(f"tiers: {n} users, {differ} differ")
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (da, db))
    bad = differ
    for x, y in zip(ma["metrics"]["models"], mb["metrics"]["models"]):
        ax, ay = x["metrics"]["roc_auc"], y["metrics"]["roc_auc"]
        ok = x["name"] == y["name"] and abs(ax - ay) <= 1e-6
        print(f"  {x['name']:<22} AUC {ax:.9f} vs {ay:.9f} {'ok' if ok else 'DIFFER'}")
        bad += not ok
    if len(ma["metrics"]["models"]) != len(mb["metrics"]["models"]):
        bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
