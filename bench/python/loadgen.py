#!/usr/bin/env python3
"""The serving load: the same requests, from the same independent load generator, for both servers.

The load generator is h2load (Debian's nghttp2-client; C, one thread), speaking gRPC as plain
HTTP/2: POST /tiering.v1.Tiering/<Method> with `content-type: application/grpc`, `te: trailers`
and a body file holding one length-prefixed protobuf message built here with the generated
Python stubs. h2load sends the same body on every request, so a run asks for one user
(GetUserTier) or one fixed list of 1,000 users (BatchGetUserTiers), drawn at random (seeded) from
the users both servers hold; neither server caches answers, and both look a user up in a hash map,
so the user id does not change the work. h2load counts HTTP statuses only (a gRPC error travels
in trailers with HTTP 200), so `preflight` first calls both methods through a real gRPC client
and checks the answers. Latency percentiles come from h2load's --log-file (one line per request,
microseconds until the end of the response, measurement period only).

    loadgen.py stubs    --proto DIR --out DIR
    loadgen.py bodies   --model model.pkl --out DIR [--seed 42]
    loadgen.py preflight --port P --bodies DIR --stubs DIR [--pid PID] [--timeout 120]
    loadgen.py run      --port P --pid PID --name NAME --bodies DIR --duration S --json FILE
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import resource
import struct
import subprocess
import sys
import time

import numpy as np

METHOD_PATH = "/tiering.v1.Tiering/"


def frame(msg: bytes) -> bytes:
    """gRPC message framing: 1 byte compressed flag, 4 bytes big-endian length."""
    return struct.pack(">BI", 0, len(msg)) + msg


def cmd_stubs(args) -> int:
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(args.out, exist_ok=True)
    rc = protoc.main(
        [
            "protoc",
            f"-I{args.proto}",
            f"-I{include}",
            f"--python_out={args.out}",
            f"--grpc_python_out={args.out}",
            os.path.join(args.proto, "tiering", "v1", "tiering.proto"),
        ]
    )
    return rc


def load_stubs(stubs: str):
    sys.path.insert(0, stubs)
    from tiering.v1 import tiering_pb2 as pb
    from tiering.v1 import tiering_pb2_grpc as rpc

    return pb, rpc


def cmd_bodies(args) -> int:
    pb, _ = load_stubs(args.stubs)
    with open(args.model, "rb") as fh:
        ids = pickle.load(fh)["user_ids"]
    rng = np.random.default_rng(args.seed)
    one = str(ids[rng.integers(len(ids))])
    batch = [str(u) for u in rng.choice(ids, size=min(1000, len(ids)), replace=False)]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "get.bin"), "wb") as fh:
        fh.write(frame(pb.GetUserTierRequest(user_id=one).SerializeToString()))
    with open(os.path.join(args.out, "batch.bin"), "wb") as fh:
        fh.write(frame(pb.BatchGetUserTiersRequest(user_ids=batch).SerializeToString()))
    with open(os.path.join(args.out, "ids.json"), "w") as fh:
        json.dump({"get": one, "batch": batch}, fh)
    return 0


def cmd_preflight(args) -> int:
    import grpc

    pb, rpc = load_stubs(args.stubs)
    ids = json.load(open(os.path.join(args.bodies, "ids.json")))
    channel = grpc.insecure_channel(f"127.0.0.1:{args.port}")
    ready = grpc.channel_ready_future(channel)
    deadline = time.time() + args.timeout
    while True:  # wait for the port, but give up at once if the server process is gone
        try:
            ready.result(timeout=0.5)
            break
        except grpc.FutureTimeoutError:
            if args.pid and not os.path.exists(f"/proc/{args.pid}"):
                print(f"the server (pid {args.pid}) exited before it was ready", file=sys.stderr)
                return 1
            if time.time() > deadline:
                print(f"server on port {args.port} not ready after {args.timeout} s", file=sys.stderr)
                return 1
    stub = rpc.TieringStub(channel)
    deadline = time.time() + args.timeout
    while True:  # the port can be open before a model is live (UNAVAILABLE): wait for it
        try:
            one = stub.GetUserTier(pb.GetUserTierRequest(user_id=ids["get"]), timeout=10)
            break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.time() > deadline:
                print(f"GetUserTier failed: {e.code()} {e.details()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    batch = stub.BatchGetUserTiers(pb.BatchGetUserTiersRequest(user_ids=ids["batch"]), timeout=30)
    if len(batch.users) != len(ids["batch"]) or batch.not_found:
        print(f"BatchGetUserTiers: {len(batch.users)} found, {len(batch.not_found)} not found", file=sys.stderr)
        return 1
    sizes = {
        "get_response_bytes": len(one.SerializeToString()),
        "batch_response_bytes": len(batch.SerializeToString()),
    }
    print(
        json.dumps(
            {
                "user_id": one.user_id,
                "tier_id": one.tier_id,
                "churn_probability": round(one.churn_probability, 4),
                "top_factors": [f.feature for f in one.top_factors],
                **sizes,
            }
        )
    )
    return 0


SUMMARY = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")


def h2load(port: int, method: str, body: str, conc: int, duration: float, log: str, warmup: float) -> dict:
    clients, streams = (conc, 1) if conc <= 16 else (16, conc // 16)
    cmd = [
        "h2load",
        "-c", str(clients),
        "-m", str(streams),
        "-t", "1",
        "-D", str(int(duration)),
        "--warm-up-time", str(int(warmup)),
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
        "-d", body,
        "--log-file", log,
        f"http://127.0.0.1:{port}{METHOD_PATH}{method}",
    ]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 60)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if out.returncode != 0:
        raise SystemExit(f"h2load failed ({out.returncode}): {out.stderr or out.stdout}")
    m = SUMMARY.search(out.stdout)
    r = REQUESTS.search(out.stdout)
    if not m or not r:
        raise SystemExit(f"cannot parse h2load output:\n{out.stdout}")
    total, _, done, ok, failed, errored, timeouts = map(int, r.groups())
    lat = []  # h2load logs the requests of the measurement period only
    with open(log) as fh:
        for line in fh:
            parts = line.split("\t")
            if len(parts) >= 3:
                lat.append(float(parts[2]))
    lat = np.asarray(lat) / 1000.0  # ms
    return {
        "clients": clients,
        "streams_per_client": streams,
        "in_flight": clients * streams,
        "rps": float(m.group(3)),
        "requests": done,
        "succeeded": ok,
        "failed": failed + errored + timeouts,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p90_ms": float(np.percentile(lat, 90)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "max_ms": float(lat.max()) if len(lat) else float("nan"),
        "latency_samples": int(len(lat)),
        "client_cpu_cores": client_cpu / wall,
    }


def cmd_run(args) -> int:
    import psutil

    proc = psutil.Process(args.pid)
    results = []
    plan = [("GetUserTier", "get.bin", c, 1) for c in args.concurrency] + [
        ("BatchGetUserTiers", "batch.bin", c, 1000) for c in args.batch_concurrency
    ]
    for method, body, conc, ids_per_req in plan:
        cpu0 = sum(proc.cpu_times()[:2])
        t0 = time.perf_counter()
        r = h2load(
            args.port,
            method,
            os.path.join(args.bodies, body),
            conc,
            args.duration,
            os.path.join(args.bodies, f"{args.name}-{method}-{conc}.log"),
            args.warmup,
        )
        wall = time.perf_counter() - t0
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        r.update(
            {
                "server": args.name,
                "method": method,
                "concurrency": conc,
                "users_per_sec": r["rps"] * ids_per_req,
                "server_cpu_cores": cpu / wall,
                "server_rss_mib": proc.memory_info().rss / 2**20,
            }
        )
        if r["failed"] or r["succeeded"] == 0:
            raise SystemExit(f"{args.name} {method} c={conc}: {r['failed']} failed requests")
        print(
            f"{args.name:<8} {method:<18} c={conc:<3} {r['rps']:>10.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
            f"p99 {r['p99_ms']:.3f} ms  CPU: server {r['server_cpu_cores']:.2f}, h2load {r['client_cpu_cores']:.2f} cores",
            flush=True,
        )
        results.append(r)
    existing = json.load(open(args.json)) if os.path.exists(args.json) else []
    with open(args.json, "w") as fh:
        json.dump(existing + results, fh, indent=1)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stubs")
    s.add_argument("--proto", required=True)
    s.add_argument("--out", required=True)
    b = sub.add_parser("bodies")
    b.add_argument("--model", required=True)
    b.add_argument("--stubs", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=42)
    p = sub.add_parser("preflight")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bodies", required=True)
    p.add_argument("--stubs", required=True)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--pid", type=int, help="the server's pid: fail at once if it exits")
    r = sub.add_parser("run")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--pid", type=int, required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--bodies", required=True)
    r.add_argument("--duration", type=float, default=10)
    r.add_argument("--warmup", type=float, default=1)
    r.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    r.add_argument("--batch-concurrency", type=int, nargs="+", default=[1, 4])
    r.add_argument("--json", required=True)
    args = ap.parse_args()
    return {"stubs": cmd_stubs, "bodies": cmd_bodies, "preflight": cmd_preflight, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
