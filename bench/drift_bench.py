#!/usr/bin/env python
"""Drift benchmark: what the drift check costs per recorded tool call, side by side.

    .venv/bin/python bench/drift_bench.py [--calls 200] [--rounds 5] [--warmup 50]
        [--database custody_drift_bench] [--broker-db 4] [--cache-db 5]

What it does, in order:
1. Creates the PostgreSQL database (default `custody_drift_bench`) afresh, migrates it in this
   process (production settings, DEBUG off, Slack off), seeds a trust domain whose ES256 key
   this script holds, a sponsor and team, the invoice bot and `payments-db:read` (low risk,
   granted automatically; `bench.api_bench.seed`), and makes the agent eligible.
2. Drives POST /api/v1/grants/{id}/tool-calls through Django's whole stack (middleware,
   workload-identity authentication of a fresh JWT-SVID per call, DRF, the service, the audit
   chain) with `django.test.Client` in this process, so this process is the worker: its CPU
   (time.process_time) per call is the worker CPU per call. Four variants:
     none     the drift check taken out (bench-only: `services.tokens._drift` replaced by a
              function answering None), the floor;
     allow    the drift check with a drift policy that allows everything
              (`@drift("allow") permit (...)` replacing the shipped one);
     default  the shipped drift policy (drift-default), calls that keep to the intent;
     drifting the shipped drift policy, every call outside the intent's target, so each one
              writes a DriftFlag and a `grant.drift_flagged` event.
   Each round runs every variant once, in a rotated order (so whatever else runs on the shared
   machine weighs on all alike), each on a fresh grant (so the burst window counts the same
   calls) after `--warmup` calls that are not measured. A policy change between variants goes
   through `policy_save` (as admin does) and is seen at the next call.
3. Prints, per variant: worker CPU per call (median of the rounds, and min–max), PostgreSQL
   backend CPU per call (/proc of this connection's backend), SQL statements per call (counted
   by a connection execute_wrapper), wall time per call; then checks that every call answered
   201, that the flags written match the drifting calls, and that the audit chain verifies.

Nothing leaves 127.0.0.1. Redis db 4 (broker) and 5 (cache) are the defaults, as the drift
worktree's; pass others with --broker-db/--cache-db.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ALLOW_EVERYTHING = """@id("allow-everything")
@drift("allow")
permit (principal, action == Action::"tool_call", resource);
"""
VARIANTS = ["none", "allow", "default", "drifting"]
LABELS = {
    "none": "no drift check (bench-only patch)",
    "allow": "drift check, policy allowing everything",
    "default": "drift check, shipped policy, clean calls",
    "drifting": "drift check, shipped policy, every call flagged",
}
CLEAN_TARGET = "invoices 2026-11/inv-3"
DRIFT_TARGET = "payroll 2026-11"


@dataclass
class Sample:
    cpu_ms: float
    db_cpu_ms: float
    statements: float
    wall_ms: float


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    statuses: dict[int, int] = field(default_factory=dict)
    drifting_calls: int = 0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="measured calls per variant/round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured calls first")
    parser.add_argument("--database", default="custody_drift_bench")
    parser.add_argument("--broker-db", type=int, default=4)
    parser.add_argument("--cache-db", type=int, default=5)
    return parser.parse_args()


def prepare_environment(args) -> None:
    import psycopg

    with psycopg.connect(
        "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
    ) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{args.database}"')
    for name in [key for key in os.environ if key.startswith("SLACK_")]:
        del os.environ[name]
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="testserver",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{args.database}",
        CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{args.broker_db}",
        CACHE_URL=f"redis://127.0.0.1:6379/{args.cache_db}",
        CUSTODY_VAR_DIR=tempfile.mkdtemp(prefix="custody-drift-bench-"),
        LOG_LEVEL="WARNING",
        CUSTODY_CUMULATIVE_FACTOR="0",  # one agent takes many grants of one privilege
        CUSTODY_MAX_PENDING_PER_AGENT="1000000",
    )


class StatementCounter:
    def __init__(self):
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


def set_drift_policy(text: str) -> None:
    from approvals.models import Policy
    from approvals.services import policy_save
    from audit.services import Actor

    row = Policy.objects.get(name="drift-default")
    if row.text != text:
        row.text = text
        policy_save(policy_row=row, actor=Actor.system("drift bench"), created=False)


def new_grant(client, token: str, task_id: str) -> int:
    response = client.post(
        "/api/v1/requests",
        {
            "privilege": "payments-db:read",
            "task_id": task_id,
            "duration_seconds": 900,  # ≤ 15 min: the shipped policy grants it at once
            "intent": {
                "action": "reconcile invoices",
                "target": "invoices 2026-11",
                "justification": "3 invoices do not match the ledger.",
            },
        },
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    body = response.json()
    assert response.status_code == 201 and body["status"] == "approved", body
    return body["grant"]["id"]


def run_variant(variant, *, client, signer, agent_id, round_no, args, results) -> None:
    from django.db import connection

    from approvals.policy import DRIFT_DEFAULT_TEXT
    from approvals.services import tokens
    from bench.api_bench import proc_stat

    set_drift_policy(ALLOW_EVERYTHING if variant == "allow" else DRIFT_DEFAULT_TEXT)
    original = tokens._drift
    if variant == "none":
        tokens._drift = lambda *args, **kwargs: None
    try:
        grant_id = new_grant(
            client, signer.mint(agent_id), f"bench-{variant}-{round_no}-{secrets.token_hex(3)}"
        )
        target = DRIFT_TARGET if variant == "drifting" else CLEAN_TARGET
        # Each call authenticates with a fresh SVID, as an agent's each call would carry one;
        # minted beforehand so the signing is not counted as the worker's.
        tokens_ = [signer.mint(agent_id) for _ in range(args.warmup + args.calls)]
        url = f"/api/v1/grants/{grant_id}/tool-calls"
        body = {"tool": "sql.select", "target": target, "action": "read", "outcome": "success"}

        def one(token):
            response = client.post(
                url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
            )
            results.statuses[response.status_code] = (
                results.statuses.get(response.status_code, 0) + 1
            )

        for token in tokens_[: args.warmup]:
            one(token)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (backend,) = cursor.fetchone()
        counter = StatementCounter()
        db_before = proc_stat(backend)[1]
        wall_before, cpu_before = time.perf_counter(), time.process_time()
        with connection.execute_wrapper(counter):
            for token in tokens_[args.warmup :]:
                one(token)
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        db_cpu = proc_stat(backend)[1] - db_before
    finally:
        tokens._drift = original
    if variant == "drifting":
        results.drifting_calls += args.warmup + args.calls
    n = args.calls
    results.samples[variant].append(
        Sample(1000 * cpu / n, 1000 * db_cpu / n, counter.count / n, 1000 * wall / n)
    )


def report(results: Results, args, started: float) -> int:
    from approvals.models import DriftFlag
    from audit.services import verify_chain

    def median(values):
        return statistics.median(values)

    print()
    print(
        f"Drift check per recorded tool call: {args.rounds} rounds × {args.calls} calls per "
        f"variant (+{args.warmup} warm-up), in-process worker, PostgreSQL {args.database}"
    )
    header = (
        f"{'variant':<50} {'worker CPU ms':>14} {'(min–max)':>13} {'DB CPU ms':>10} "
        f"{'SQL/call':>9} {'wall ms':>8}"
    )
    print(header)
    print("-" * len(header))
    floor = median([s.cpu_ms for s in results.samples["none"]])
    for variant in VARIANTS:
        samples = results.samples[variant]
        cpu = [s.cpu_ms for s in samples]
        print(
            f"{LABELS[variant]:<50} {median(cpu):>14.2f} "
            f"{f'{min(cpu):.2f}–{max(cpu):.2f}':>13} "
            f"{median([s.db_cpu_ms for s in samples]):>10.2f} "
            f"{median([s.statements for s in samples]):>9.1f} "
            f"{median([s.wall_ms for s in samples]):>8.2f}"
        )
    print()
    for variant in VARIANTS[1:]:
        cpu = median([s.cpu_ms for s in results.samples[variant]])
        print(
            f"  {variant:<9} worker CPU over the floor: {cpu - floor:+.2f} ms ({cpu / floor:.2f}×)"
        )
    flags = DriftFlag.objects.count()
    chain = verify_chain()
    print()
    print(f"answers: {dict(sorted(results.statuses.items()))}")
    print(f"drift flags written: {flags} (drifting calls: {results.drifting_calls})")
    print(f"audit chain: {'verifies' if chain.ok else 'BROKEN'}")
    print(f"took {time.monotonic() - started:.0f} s")
    ok = set(results.statuses) == {201} and flags >= results.drifting_calls and chain.ok
    return 0 if ok else 1


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    prepare_environment(args)
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0, interactive=False)
    from bench.api_bench import AGENT_SPIFFE_ID, SvidSigner, seed
    from bench.seeding import make_every_agent_eligible

    signer = SvidSigner()
    seed(signer)
    make_every_agent_eligible()
    client = Client()
    results = Results()
    for round_no in range(args.rounds):
        order = VARIANTS[round_no % len(VARIANTS) :] + VARIANTS[: round_no % len(VARIANTS)]
        for variant in order:
            run_variant(
                variant,
                client=client,
                signer=signer,
                agent_id=AGENT_SPIFFE_ID,
                round_no=round_no,
                args=args,
                results=results,
            )
        print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    return report(results, args, started)


if __name__ == "__main__":
    sys.exit(main())
