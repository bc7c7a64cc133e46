#!/usr/bin/env python3
"""The report step of bench/compare.sh.

    report.py env   --json env.json ...        machine, versions, parameters, load at the start
    report.py write --work DIR --out FILE      the Markdown section for this run into FILE

FILE holds one section per user count, between `<!-- compare:users=N -->` and
`<!-- /compare:users=N -->`; writing replaces the section for this N and keeps the others
(sorted by N), so the 20k CI-size run and a documented 1M run can live in one file.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from importlib import metadata

PACKAGES = ["numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "lightgbm", "lifetimes", "grpcio", "protobuf", "psutil"]


def sh(*cmd: str, cwd: str | None = None) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def loadavg() -> float:
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def cmd_env(args) -> int:
    cpu = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", fh.read()).group(1))
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = "?"
    commit = sh("git", "rev-parse", "--short", "HEAD", cwd=args.root)
    dirty = sh("git", "status", "--porcelain", "--untracked-files=no", cwd=args.root)
    env = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "cpu": cpu or platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rustc": sh("rustc", "--version"),
        "h2load": sh("h2load", "--version"),
        "tiering_commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "tiering_bin": args.bin,
        "packages": versions,
        "users": args.users,
        "repeats": args.repeats,
        "duration": args.duration,
        "load_at_start": loadavg(),
    }
    with open(args.json, "w") as fh:
        json.dump(env, fh, indent=1)
    return 0


# ---- parsing ------------------------------------------------------------------------------------


def parse_time_v(path: str) -> dict:
    text = open(path).read()

    def grab(label: str) -> str:
        m = re.search(re.escape(label) + r".*?:\s*([^\n]+)", text)
        return m.group(1).strip() if m else ""

    wall = grab("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(p) for p in wall.split(":")]
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    return {
        "wall_s": secs,
        "rss_mib": int(grab("Maximum resident set size (kbytes)")) / 1024.0,
        "cpu_s": float(grab("User time (seconds)")) + float(grab("System time (seconds)")),
    }


def tiering_stages(path: str) -> str:
    for line in open(path):
        if line.startswith("stages:"):
            return line[len("stages:"):].strip()
    return ""


def runs(work: str, side: str) -> list[dict]:
    out = []
    for t in sorted(glob.glob(os.path.join(work, f"train-{side}-*.time"))):
        name = t[: -len(".time")]
        r = parse_time_v(t)
        r["load"] = float(open(name + ".load").read()) if os.path.exists(name + ".load") else float("nan")
        if side == "tiering":
            r["stages"] = tiering_stages(name + ".out")
        elif os.path.exists(name + ".json"):
            r["summary"] = json.load(open(name + ".json"))
        out.append(r)
    return out


def parse_stage_secs(stages: str) -> dict[str, float]:
    """'read 1.10 s (4.7 M events/s), features 0.18 s, ...' -> {'read': 1.1, 'features': 0.18, ...}"""
    out = {}
    for m in re.finditer(r"(?:^|, )([a-z ]+?) ([\d.]+) s", stages):
        out[m.group(1).strip()] = float(m.group(2))
    return out


def speed_run_fits(work: str) -> dict[str, float]:
    paths = sorted(glob.glob(os.path.join(work, "models-speed-*", "*", "manifest.json")))
    if not paths:
        return {}
    m = json.load(open(paths[-1]))
    return {x["name"]: float(x.get("fit_seconds", 0.0)) for x in m["metrics"]["models"]}


def med(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)


# ---- writing ------------------------------------------------------------------------------------

NAMES = {
    "tiering": "**tiering** (served model, Platt-calibrated)",
    "sklearn_logistic": "scikit-learn StandardScaler + LogisticRegression (lbfgs)",
    "lightgbm_default": "LightGBM, defaults",
    "lightgbm_tuned": "LightGBM, tuned on a validation split of train",
    "bgnbd": "lifetimes BG/NBD (orders only)",
}


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def churn_section(q: dict, parity: dict) -> tuple[list[str], list[str]]:
    L, V = [], []
    r = q["rows"]
    m = q["meta"]
    L.append("### 1. Churn quality (identical rows, features and label windows)")
    L.append("")
    L.append(
        f"Fitted on the {fmt_int(r['train'])} users known at snapshot A = {m['train_snapshot']} "
        f"(labels: no order in the next {m['horizon_days']} days), evaluated out of time on the "
        f"{fmt_int(r['test'])} users known at B = {m['test_snapshot']} (churn rate {r['test_churn_rate']:.1%}). "
        "Rows and features are tiering's `--export-eval` export; every metric below is computed by "
        "scikit-learn on the same probabilities (tiering's own report agrees: "
        + ", ".join(f"{k} {v['roc_auc']:.4f}" for k, v in q["tiering_reported"].items())
        + ")."
    )
    L.append("")
    for subset, title in (("all", "all users known at B"), ("buyers", f"buyers only ({fmt_int(r['test_buyers'])} users with an order before B, churn rate {r['test_buyers_churn_rate']:.1%})")):
        L.append(f"{title}:")
        L.append("")
        L.append("| method | ROC-AUC | PR-AUC | Brier | log loss |")
        L.append("| --- | ---: | ---: | ---: | ---: |")
        for name, mm in q["churn"][subset].items():
            L.append(f"| {NAMES.get(name, name)} | {mm['roc_auc']:.4f} | {mm['pr_auc']:.4f} | {mm['brier']:.4f} | {mm['log_loss']:.4f} |")
        L.append("")
    t = q["lightgbm_tuned"]
    b = q["bgnbd"]
    L.append(
        f"Tuned LightGBM: {t['grid_size']} settings of num_leaves x learning_rate x min_child_samples, "
        f"trees by early stopping, chosen on a 20% validation split of the train rows: {t['params']}, "
        f"{t['n_estimators']} trees (validation ROC-AUC {t['validation_auc']:.4f})."
    )
    L.append(
        f"BG/NBD: fitted on {fmt_int(b['orders_before_snapshot'])} orders of {fmt_int(b['customers'])} customers before B "
        f"(r={b['params']['r']:.3f}, alpha={b['params']['alpha']:.3f}, a={b['params']['a']:.3f}, b={b['params']['b']:.3f}; "
        f"penalizer {b['penalizer']}); P(churn) = (1 - P(alive)) + P(alive)·((alpha+T)/(alpha+T+H))^(r+x). "
        f"Users with no order before B are outside BG/NBD's model and get the churn rate of non-buyers at A "
        f"({b['nonbuyer_probability']:.3f}, from the train rows); the buyers-only table scores every method on "
        "BG/NBD's own population."
    )
    if parity:
        te = parity["test"]
        L.append(
            f"Feature parity of the pandas pipeline (step 2) with these rows: same users and labels at A and B, "
            f"max abs difference {te['max_abs_diff_exact_features']:.1e} on the exact features; rooms and categories differ "
            f"because tiering estimates distinct counts with a 64-bit sketch (mean abs log1p difference "
            f"{te['mean_abs_diff_sketched']['rooms']:.3f} / {te['mean_abs_diff_sketched']['categories']:.3f})."
        )
    L.append("")
    for subset in ("all", "buyers"):
        c = q["churn"][subset]
        tier = c["tiering"]["roc_auc"]
        best_gbm = max(c["lightgbm_default"]["roc_auc"], c["lightgbm_tuned"]["roc_auc"])
        ok1 = tier >= best_gbm - 0.005
        ok2 = tier > c["bgnbd"]["roc_auc"]
        V.append(
            f"- Churn ROC-AUC ({subset}): tiering {tier:.4f} vs LightGBM default {c['lightgbm_default']['roc_auc']:.4f} / "
            f"tuned {c['lightgbm_tuned']['roc_auc']:.4f}: {verdict(ok1)} (target ≥ best LightGBM − 0.005 = {best_gbm - 0.005:.4f}); "
            f"vs BG/NBD {c['bgnbd']['roc_auc']:.4f}: {verdict(ok2)} (target >)."
        )
    return L, V


def cluster_section(q: dict) -> list[str]:
    c = q["clustering"]
    rep = q["tiering_clustering_reported"]
    L = ["### Tiers (k-means quality, k = %d)" % c["k"], ""]
    L.append(
        f"On the {fmt_int(c['rows'])} rows tiering clustered (every user known at as_of, standardised with its served "
        "scaler, exported as tiers.csv by `--export-eval`), both in sample: tiering's tiers as its bundle assigns them, "
        "with its centroids (fitted on a keyed 200,000-row sample, then every row assigned to the nearest); "
        "scikit-learn KMeans (k-means++, 3 inits like tiering's 3 runs, 200 iterations) fitted on all these rows. "
        f"Silhouette on the same {fmt_int(c['silhouette_sample'])}-row sample for both; inertia = mean squared distance "
        "to the assigned centroid over all rows (lower is better); ARI against the generator's personas (higher is better)."
    )
    L.append("")
    L.append("| method | silhouette | inertia per row | ARI vs personas | tier sizes |")
    L.append("| --- | ---: | ---: | ---: | --- |")
    for name, m in c["methods"].items():
        label = "**tiering**" if name == "tiering" else "scikit-learn KMeans"
        ari = f"{m['ari_vs_personas']:.3f}" if "ari_vs_personas" in m else "n/a"
        L.append(f"| {label} | {m['silhouette']:.4f} | {m['inertia_per_row']:.4f} | {ari} | {', '.join(map(str, m['sizes']))} |")
    L.append("")
    L.append(
        f"Agreement between the two partitions: ARI {c['ari_between']:.3f}. tiering chose k = {rep['k']} by silhouette "
        f"over {[k for k, _ in rep['k_scores'] or []]}; scikit-learn was given the same k."
    )
    L.append("")
    return L


def training_section(work: str, env: dict) -> tuple[list[str], list[str]]:
    L, V = [], []
    tr, py = runs(work, "tiering"), runs(work, "python")
    if not tr or not py:
        return L, V
    k = None
    if py[0].get("summary"):
        k = py[0]["summary"]["k"]
    L.append(f"### 2. Training: wall time and peak memory ({len(tr)} run(s) each, median)")
    L.append("")
    L.append(
        f"The whole job on the same files: read events + users, point-in-time features at A, B and as_of, labels, "
        f"fit + out-of-time evaluation of logistic regression and 100-tree boosting on A, refit on B, k-means with k = {k}, "
        "score every user, write the outputs. Whole processes under `/usr/bin/time -v` (Python: interpreter start and "
        "imports included; OpenMP told to wait passively, `OMP_WAIT_POLICY=PASSIVE`, so that a shared machine does not stall "
        "LightGBM's threads). tiering is run with `--k` set to the k it chose in step 1, so both sides skip the k search."
    )
    L.append("")
    L.append("| | wall s (median) | runs | peak RSS MiB | CPU s (user+sys) | load avg before |")
    L.append("| --- | ---: | --- | ---: | ---: | ---: |")
    for name, rs in (("**tiering train**", tr), ("Python pipeline (pandas + scikit-learn + LightGBM)", py)):
        L.append(
            f"| {name} | {med(rs, 'wall_s'):.2f} | {', '.join('%.2f' % r['wall_s'] for r in rs)} | "
            f"{med(rs, 'rss_mib'):,.0f} | {med(rs, 'cpu_s'):.1f} | {', '.join('%.1f' % r['load'] for r in rs)} |"
        )
    speed = med(py, "wall_s") / med(tr, "wall_s")
    mem = med(tr, "rss_mib") / med(py, "rss_mib")
    L.append(f"| ratio | **{speed:.1f}x faster** | | **{mem:.2f}x the memory** | {med(py, 'cpu_s') / med(tr, 'cpu_s'):.1f}x less CPU | |")
    L.append("")
    tq = os.path.join(work, "train-quality.time")
    if os.path.exists(tq):
        q = parse_time_v(tq)
        L.append(
            f"For reference, the step-1 run with k chosen by silhouette (k = 4..8) and `--export-eval`: "
            f"{q['wall_s']:.2f} s, {q['rss_mib']:,.0f} MiB."
        )
    L.append(f"tiering's stages (last run): {tr[-1].get('stages', '')}.")
    if py[-1].get("summary"):
        st = py[-1]["summary"]["stages"]
        L.append("Python's stages (last run): " + ", ".join(f"{k} {v:.2f} s" for k, v in st.items()) + ".")
    fits = speed_run_fits(work)
    if fits:
        L.append(
            "Churn model fits inside tiering train (from the bundle's manifest, each fitted twice: on A for the "
            "evaluation, on B for serving): " + ", ".join(f"{n} {s:.2f} s" for n, s in fits.items()) + "."
        )
    py_stages = py[-1].get("summary", {}).get("stages", {})
    tr_stages = parse_stage_secs(tr[-1].get("stages", ""))
    if tr_stages and py_stages:
        pairs = [
            ("reading the events", tr_stages.get("read"), py_stages.get("read")),
            ("features + labels", sum(tr_stages.get(s, 0) for s in ("features", "labels")), py_stages.get("features+labels")),
            ("churn models (fit, evaluate, refit)", sum(tr_stages.get(s, 0) for s in ("evaluation", "final churn fit")),
             (py_stages.get("churn fit A + evaluation on B") or 0) + (py_stages.get("churn refit on B") or 0)),
            ("k-means", tr_stages.get("tiers"), py_stages.get("kmeans")),
            ("scoring every user", tr_stages.get("scoring"), py_stages.get("predict all users")),
        ]
        L.append(
            "Stage by stage, tiering vs Python (last runs): "
            + "; ".join(f"{n} {a:.2f} s vs {b:.2f} s ({b / a:.1f}x)" for n, a, b in pairs if a and b)
            + f"; Python's interpreter start + imports {py_stages.get('imports', 0):.2f} s."
        )
    L.append("")
    ok = speed >= 5 and mem < 0.5
    users = env.get("users", 0)
    scale = "" if users >= 1_000_000 else f" (measured at {users:,} users; the target is stated at 1,000,000)"
    V.append(
        f"- Training{scale}: {speed:.1f}x faster, {mem:.2f}x the peak memory: {verdict(ok)} "
        "(target ≥ 5x faster and < 0.5x the memory)."
    )
    return L, V


def serving_section(work: str) -> tuple[list[str], list[str]]:
    path = os.path.join(work, "serving.json")
    if not os.path.exists(path):
        return [], ["- Serving: not measured in this run (`--skip-serving`)."]
    rows = json.load(open(path))
    L = ["### 3. Serving: the same h2load runs against both servers (127.0.0.1)", ""]
    pre = {}
    for side in ("tiering", "python"):
        p = os.path.join(work, f"preflight-{side}.json")
        if os.path.exists(p):
            pre[side] = json.load(open(p))
    L.append(
        "h2load (one thread) sends one fixed request again and again for the run's duration; `in flight` = "
        "connections x streams per connection. Latency percentiles from h2load's per-request log. CPU cores = "
        "CPU seconds / wall seconds during the run, of the server process and of h2load; the 2 cores are shared by "
        "both (and by whatever else runs on the machine): where h2load sits near 1 core, the load generator, not the "
        "server, is the limit, and the server's figure is a lower bound."
    )
    if pre:
        L.append(
            "Answer sizes: "
            + "; ".join(f"{s} {p['get_response_bytes']} B per user, {p['batch_response_bytes']:,} B per 1,000-user batch" for s, p in pre.items())
            + " (the Python servers return no top factors for a LightGBM model, see bench/README.md)."
        )
    L.append("")
    L.append("| server | method | in flight | req/s | users/s | p50 ms | p99 ms | CPU cores: server / h2load |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        name = {
            "tiering": "**tiering serve**",
            "python": "Python grpcio (8 threads), scikit-learn API",
            "python-numpy": "Python grpcio (8 threads), numpy path (best case)",
        }.get(r["server"], r["server"])
        L.append(
            f"| {name} | {r['method']} | {r['in_flight']} | {r['rps']:,.0f} | {r['users_per_sec']:,.0f} | "
            f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['server_cpu_cores']:.2f} / {r.get('client_cpu_cores', float('nan')):.2f} |"
        )
    L.append("")
    V = []

    def pick(server, method, conc):
        for r in rows:
            if r["server"] == server and r["method"] == method and r["concurrency"] == conc:
                return r
        return None

    t16, p16 = pick("tiering", "GetUserTier", 16), pick("python", "GetUserTier", 16)
    if t16 and p16:
        ratio = t16["rps"] / p16["rps"]
        ok = ratio >= 10 and t16["p99_ms"] < p16["p99_ms"]
        V.append(
            f"- Serving at 16 in flight: {ratio:.1f}x the Python server's requests/s "
            f"({t16['rps']:,.0f} vs {p16['rps']:,.0f}), p99 {t16['p99_ms']:.2f} ms vs {p16['p99_ms']:.2f} ms: {verdict(ok)} "
            f"(target ≥ 10x and a lower p99). Python server CPU: {p16['server_cpu_cores']:.2f} cores."
        )
    n16 = pick("python-numpy", "GetUserTier", 16)
    if t16 and n16:
        V.append(
            f"- Against the hand-optimised Python server (numpy + LightGBM Booster, no scikit-learn per call) at 16 in "
            f"flight: {t16['rps'] / n16['rps']:.1f}x ({n16['rps']:,.0f} req/s, p99 {n16['p99_ms']:.2f} ms, "
            f"{n16['server_cpu_cores']:.2f} cores)."
        )
    bt = [r for r in rows if r["method"] == "BatchGetUserTiers"]
    if bt:
        best = {
            s: max((r["users_per_sec"] for r in bt if r["server"] == s), default=0)
            for s in ("tiering", "python", "python-numpy")
        }
        if best["python"]:
            extra = (
                f"; numpy path {best['python-numpy']:,.0f} ({best['tiering'] / best['python-numpy']:.1f}x)"
                if best["python-numpy"]
                else ""
            )
            V.append(
                f"- Batches of 1,000: best {best['tiering']:,.0f} vs {best['python']:,.0f} users/s "
                f"({best['tiering'] / best['python']:.1f}x){extra}."
            )
    return L, V


def cmd_write(args) -> int:
    w = args.work
    env = json.load(open(os.path.join(w, "env.json")))
    q = json.load(open(os.path.join(w, "quality.json")))
    parity = json.load(open(os.path.join(w, "parity.json"))) if os.path.exists(os.path.join(w, "parity.json")) else None
    users = env["users"]
    end_load = os.path.join(w, "load-end.txt")
    load_end = float(open(end_load).read()) if os.path.exists(end_load) else loadavg()
    churn, v1 = churn_section(q, parity)
    clus = cluster_section(q)
    train, v2 = training_section(w, env)
    serve, v3 = serving_section(w)
    pk = env["packages"]
    head = [
        f"## {users:,} users",
        "",
        f"`bench/compare.sh --users {users}` on {env['date_utc']}: {env['nproc']} cores ({env['cpu']}), "
        f"{env['memory_gib']} GiB; load average {env['load_at_start']:.2f} at the start, {load_end:.2f} at the end "
        "(the machine is shared: figures under load are noisy). "
        f"tiering {env['tiering_commit']} (release build), {env['rustc']}; Python {env['python']}, "
        + ", ".join(f"{k} {v}" for k, v in pk.items())
        + f"; {env['h2load']}. Data: `tiering generate --users {users} --days 180 --seed 42 --end 2026-11-01`"
        f" ({fmt_int(q['rows']['train'])} / {fmt_int(q['rows']['test'])} users at A / B).",
        "",
        "Verdicts:",
        "",
        *v1,
        *v2,
        *v3,
        "",
    ]
    section = "\n".join(head + churn + clus + train + serve).rstrip() + "\n"
    begin, end = f"<!-- compare:users={users} -->", f"<!-- /compare:users={users} -->"
    sections: dict[int, str] = {}
    if os.path.exists(args.out):
        text = open(args.out).read()
        for m in re.finditer(r"<!-- compare:users=(\d+) -->\n(.*?)<!-- /compare:users=\1 -->", text, re.S):
            sections[int(m.group(1))] = m.group(2)
    sections[users] = section
    intro = (
        "# tiering vs the Python stack\n\n"
        "Generated by `bench/compare.sh` (see bench/README.md for what each step measures and how to rerun it); "
        "each section is replaced when the command is rerun at that size. Do not edit by hand.\n\n"
    )
    body = "".join(
        f"<!-- compare:users={n} -->\n{sections[n]}<!-- /compare:users={n} -->\n\n" for n in sorted(sections)
    )
    with open(args.out, "w") as fh:
        fh.write(intro + body.rstrip() + "\n")
    print(section)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("--json", required=True)
    e.add_argument("--users", type=int, required=True)
    e.add_argument("--repeats", type=int, required=True)
    e.add_argument("--duration", type=float, required=True)
    e.add_argument("--venv", required=True)
    e.add_argument("--bin", required=True)
    e.add_argument("--root", required=True)
    w = sub.add_parser("write")
    w.add_argument("--work", required=True)
    w.add_argument("--out", required=True)
    args = ap.parse_args()
    return cmd_env(args) if args.cmd == "env" else cmd_write(args)


if __name__ == "__main__":
    sys.exit(main())
