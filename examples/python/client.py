#!/usr/bin/env python3
"""A Python client of the tiering gRPC API, and a check that the API works from Python.

The stubs are generated at run time from proto/tiering/v1/tiering.proto with grpcio-tools into
a temporary directory, so nothing generated is checked in and the client always matches the
proto of this checkout.

What it does, asserting on every answer (exit code 0 when all checks pass, 1 otherwise):

1. optionally waits for the standard health service to report SERVING (--wait-ready SECS);
2. GetModelInfo: the live model and how many users the server holds;
3. ListAtRiskUsers (server streaming), following next_page_token page by page until --limit
   users or the end: non-empty, every probability >= --min-probability, sorted by probability
   (highest first, ties by user id), no user twice, the token only on a page's last message;
4. the same list filtered to one tier (the last listed user's): only that tier, and the same users in the same
   order as the unfiltered list restricted to that tier;
5. GetUserTier for the riskiest user: matches what the list said;
6. BatchGetUserTiers: known ids answered in request order, an unknown id in not_found;
7. errors: an unknown user is NOT_FOUND, min_churn_probability 1.5 is INVALID_ARGUMENT;
8. with a token (--token-file or TIERING_TOKEN): a call without it is UNAUTHENTICATED.

TLS: --tls-ca CA.pem (and --tls-cert/--tls-key for mutual TLS; --tls-server-name when the
certificate names another host than --server). The token travels as `authorization: Bearer`.

    python client.py --server 127.0.0.1:50051 --min-probability 0.5 --limit 200
"""

import argparse
import os
import importlib
import importlib.resources
import sys
import tempfile
import time
from pathlib import Path

import grpc

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
PROTO_FILE = PROTO_ROOT / "tiering" / "v1" / "tiering.proto"


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def generate_stubs(out_dir):
    """Runs protoc (bundled with grpcio-tools) on the proto and imports the result."""
    from grpc_tools import protoc

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_FILE),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILE} (exit code {rc})")
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("tiering.v1.tiering_pb2")
    pb2_grpc = importlib.import_module("tiering.v1.tiering_pb2_grpc")
    return pb2, pb2_grpc


def wait_ready(channel, seconds):
    """Polls grpc.health.v1 until tiering.v1.Tiering is SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            r = health.Check(
                health_pb2.HealthCheckRequest(service="tiering.v1.Tiering"), timeout=2
            )
            if r.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        except grpc.RpcError as e:
            last = f"{e.code().name}: {e.details()}"
        time.sleep(0.1)
    raise CheckFailed(f"the server was not SERVING within {seconds} s (last: {last})")


def list_at_risk(stub, pb2, min_probability, limit, page_size, tiers=(), stages=()):
    """Every page until `limit` users or the end. Returns (users, pages)."""
    users, token, pages = [], "", 0
    while len(users) < limit:
        req = pb2.ListAtRiskUsersRequest(
            min_churn_probability=min_probability,
            tier_ids=list(tiers),
            lifecycle_stages=list(stages),
            limit=min(page_size, limit - len(users)),
            page_token=token,
        )
        pages += 1
        page = list(stub.ListAtRiskUsers(req, timeout=30))
        for u in page[:-1]:
            check(not u.next_page_token, f"page {pages}: a token before the last message")
        users.extend(page)
        token = page[-1].next_page_token if page else ""
        if not token:
            break
        check(pages < 10_000, "pagination does not end")
    return users[:limit], pages


def check_sorted(users, what):
    for a, b in zip(users, users[1:]):
        ordered = a.churn_probability > b.churn_probability or (
            a.churn_probability == b.churn_probability and a.user_id < b.user_id
        )
        check(
            ordered,
            f"{what}: {a.user_id} ({a.churn_probability}) before {b.user_id} ({b.churn_probability})",
        )


def expect_error(call, code, what):
    try:
        call()
    except grpc.RpcError as e:
        check(e.code() == code, f"{what}: expected {code.name}, got {e.code().name}: {e.details()}")
        return e.details()
    raise CheckFailed(f"{what}: expected {code.name}, the call succeeded")


def read_token(args):
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return os.environ.get("TIERING_TOKEN", "").strip()


def open_channel(args, token):
    """A channel with TLS when --tls-ca is given, and the token on every call."""
    target = args.server.removeprefix("http://").removeprefix("https://")
    if not args.tls_ca:
        if token:
            raise CheckFailed("a token needs TLS (--tls-ca): it would travel in clear text")
        return grpc.insecure_channel(target)
    tls = grpc.ssl_channel_credentials(
        root_certificates=Path(args.tls_ca).read_bytes(),
        private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
        certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
    )
    if token:
        tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(target, tls, options=options)


def run(args, pb2, pb2_grpc):
    token = read_token(args)
    if token:
        with open_channel(args, None) as anonymous:
            if args.wait_ready > 0:
                wait_ready(anonymous, args.wait_ready)
            expect_error(
                lambda: pb2_grpc.TieringStub(anonymous).GetModelInfo(
                    pb2.GetModelInfoRequest(), timeout=10
                ),
                grpc.StatusCode.UNAUTHENTICATED,
                "GetModelInfo without the token",
            )
            print("auth: a call without the token is UNAUTHENTICATED")
    with open_channel(args, token) as channel:
        if args.wait_ready > 0:
            wait_ready(channel, args.wait_ready)
        stub = pb2_grpc.TieringStub(channel)

        info = stub.GetModelInfo(pb2.GetModelInfoRequest(), timeout=10)
        check(info.version, "GetModelInfo: no version")
        check(info.users_held > 0, "GetModelInfo: the server holds no users")
        print(
            f"model {info.version}: {len(info.tiers)} tiers, {info.users_held} users held, "
            f"chosen model {info.chosen_model}, horizon {info.horizon_days} days"
        )

        users, pages = list_at_risk(
            stub, pb2, args.min_probability, args.limit, args.page_size
        )
        check(users, f"ListAtRiskUsers: no user at churn probability >= {args.min_probability}")
        check(
            all(u.churn_probability >= args.min_probability for u in users),
            "ListAtRiskUsers: a user below --min-probability",
        )
        check_sorted(users, "ListAtRiskUsers")
        ids = [u.user_id for u in users]
        check(len(set(ids)) == len(ids), "ListAtRiskUsers: a user listed twice")
        check(all(u.model_version == info.version for u in users), "model_version differs")
        top = users[0]
        print(f"at-risk: {len(users)} users in {pages} pages (page size {args.page_size})")
        for u in users[:5]:
            reasons = "; ".join(
                f"{f.feature}={f.contribution:+.2f} ({f.value:g})" for f in u.top_factors
            )
            print(
                f"  {u.user_id:<12} {u.churn_probability:.4f} {u.risk_level:<6} "
                f"{u.tier_id:<18} {u.lifecycle_stage:<15} {reasons}"
            )

        # Filtered to one tier (the least risky listed user's, so usually not the top tier):
        # exactly that tier's users of the list, in order. Compared within the users fetched,
        # as the unfiltered list may have stopped at --limit.
        tier = users[-1].tier_id
        tier_users, _ = list_at_risk(
            stub, pb2, args.min_probability, args.limit, args.page_size, tiers=[tier]
        )
        check(tier_users, f"ListAtRiskUsers(tier {tier}): empty")
        check(
            all(u.tier_id == tier for u in tier_users),
            f"ListAtRiskUsers(tier {tier}): another tier returned",
        )
        check_sorted(tier_users, f"ListAtRiskUsers(tier {tier})")
        expected = [u.user_id for u in users if u.tier_id == tier]
        got = [u.user_id for u in tier_users][: len(expected)]
        check(got == expected, f"ListAtRiskUsers(tier {tier}): not the filtered list")
        tiers_seen = sorted({u.tier_id for u in users})
        print(
            f"tier {tier}: {len(tier_users)} at-risk users, filter respected "
            f"(tiers in the list: {', '.join(tiers_seen)})"
        )

        one = stub.GetUserTier(pb2.GetUserTierRequest(user_id=top.user_id), timeout=10)
        check(one.user_id == top.user_id, "GetUserTier: another user answered")
        check(one.tier_id == top.tier_id, f"GetUserTier: tier {one.tier_id} != {top.tier_id}")
        check(
            abs(one.churn_probability - top.churn_probability) < 1e-9,
            f"GetUserTier: probability {one.churn_probability} != {top.churn_probability}",
        )
        check(one.lifecycle_stage == top.lifecycle_stage, "GetUserTier: lifecycle differs")
        check(list(one.recommended_actions), "GetUserTier: no playbook")
        print(
            f"lookup {one.user_id}: tier {one.tier_id} ({one.tier_name}, {one.tier_name_zh}), "
            f"churn {one.churn_probability:.4f} ({one.risk_level}), rfm {one.rfm_segment}, "
            f"playbook: {' | '.join(one.recommended_actions)}"
        )

        batch_ids = ids[:3] + ["no-such-user"]
        batch = stub.BatchGetUserTiers(pb2.BatchGetUserTiersRequest(user_ids=batch_ids), timeout=10)
        check([u.user_id for u in batch.users] == ids[:3], "BatchGetUserTiers: wrong users or order")
        check(list(batch.not_found) == ["no-such-user"], "BatchGetUserTiers: not_found")

        expect_error(
            lambda: stub.GetUserTier(pb2.GetUserTierRequest(user_id="no-such-user"), timeout=10),
            grpc.StatusCode.NOT_FOUND,
            "GetUserTier(unknown)",
        )
        details = expect_error(
            lambda: list(
                stub.ListAtRiskUsers(
                    pb2.ListAtRiskUsersRequest(min_churn_probability=1.5), timeout=10
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ListAtRiskUsers(min 1.5)",
        )
        check("min_churn_probability" in details, f"the bad field is not named: {details}")
        print("errors: unknown user NOT_FOUND, bad threshold INVALID_ARGUMENT")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of the tiering server")
    p.add_argument("--min-probability", type=float, default=0.5)
    p.add_argument("--limit", type=int, default=500, help="at most this many at-risk users")
    p.add_argument("--page-size", type=int, default=100, help="users per ListAtRiskUsers call")
    p.add_argument(
        "--wait-ready", type=float, default=0, metavar="SECS",
        help="first wait up to SECS for health SERVING",
    )
    p.add_argument("--tls-ca", metavar="FILE", help="speak TLS, trusting this CA (PEM)")
    p.add_argument("--tls-cert", metavar="FILE", help="mutual TLS: client certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="mutual TLS: client key (PEM)")
    p.add_argument("--tls-server-name", metavar="NAME", help="the name the server certificate holds")
    p.add_argument(
        "--token-file", metavar="FILE", help="API token file (else the TIERING_TOKEN variable)"
    )
    args = p.parse_args()
    if args.limit < 1 or args.page_size < 1:
        p.error("--limit and --page-size must be at least 1")
    with tempfile.TemporaryDirectory(prefix="tiering-stubs-") as stubs:
        try:
            pb2, pb2_grpc = generate_stubs(stubs)
            run(args, pb2, pb2_grpc)
        except CheckFailed as e:
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
        except grpc.RpcError as e:
            print(f"FAILED: gRPC {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print("OK: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
