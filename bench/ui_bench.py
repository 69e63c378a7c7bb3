"""Server time of the inbox and audit pages with 10,000 pending requests and 100,000 events.

    .venv/bin/python bench/ui_bench.py [--requests 10000] [--events 100000] [--rounds 20]

Runs against its own PostgreSQL database (created and migrated fresh), renders each page through
Django's test client in-process (so the figure is server time: routing, queries, templates), and
prints p50/p95/max per page next to the 150 ms target, plus the queries each page ran.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
# Its own database (UI_BENCH_DB to choose another, so parallel runs never drop each other's).
DB_NAME = os.environ.get("UI_BENCH_DB", "custody_bench_ui")
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "SECRET_KEY": "bench-only-secret-key-0123456789abcdefghijklmnop",
        "ALLOWED_HOSTS": "testserver,127.0.0.1",
        "DEBUG": "false",
        "CUSTODY_VAR_DIR": "/tmp/custody-bench-ui",
    }
)
sys.path.insert(0, str(ROOT))


def fresh_database() -> None:
    for sql in (f"DROP DATABASE IF EXISTS {DB_NAME}", f"CREATE DATABASE {DB_NAME}"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)


def populate(n_requests: int, n_events: int):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.utils import timezone

    from agents.models import TrustDomain
    from agents.services import agent_register
    from approvals.models import AccessRequest, Privilege
    from audit.models import GENESIS_HASH, AuditChainHead, AuditEvent
    from audit.partitions import partition_cover
    from audit.services import Actor

    user_model = get_user_model()
    sponsor = user_model.objects.create_user("sponsor", password="bench-password-1")
    team = Group.objects.create(name="bench-team")
    sponsor.groups.add(team)  # an agent's team has an active member (invariant 13)
    TrustDomain.objects.create(name="bench.test", kind=TrustDomain.Kind.SPIFFE, jwks={"keys": []})
    agents = [
        agent_register(
            spiffe_id=f"spiffe://bench.test/agents/a{n}",
            name=f"Agent {n}",
            sponsor=sponsor,
            team=team,
            actor=Actor.system("bench"),
        )
        for n in range(20)
    ]
    privilege = Privilege.objects.create(resource="payments-db", action="write", risk="high")
    now = timezone.now()
    AccessRequest.objects.bulk_create(
        [
            AccessRequest(
                agent=agents[n % len(agents)],
                privilege=privilege,
                task_id=f"t{n}",
                intent={"action": "write", "target": f"row {n}", "justification": "bench"},
                duration_seconds=600,
                status="pending",
                policy_outcome="request",
                policy_ids=["high-risk-two-approvals"],
                policy_reason="bench",
                approvals_required=2,
                created_at=now - timedelta(seconds=n),
                decision_deadline=now + timedelta(seconds=3600 + n),
            )
            for n in range(n_requests)
        ],
        batch_size=2000,
    )
    head = AuditChainHead.objects.get(id=1)
    previous, sequence = head.last_hash, head.last_sequence
    # Written past the head before it moves: the partitions they land in are made first.
    partition_cover(through=sequence + n_events, size=max(n_events, 10_000))
    batch = []
    for n in range(n_events):
        sequence += 1
        event = AuditEvent(
            sequence=sequence,
            occurred_at=now,
            actor_type="agent",
            actor_id=agents[n % len(agents)].spiffe_id,
            verb="tool.called",
            agent_id=agents[n % len(agents)].pk,
            data={"n": n},
            previous_hash=previous,
        )
        event.hash = event.compute_hash()
        previous = event.hash
        batch.append(event)
        if len(batch) == 5000:
            AuditEvent.objects.bulk_create(batch)
            batch = []
    AuditEvent.objects.bulk_create(batch)
    AuditChainHead.objects.filter(id=1).update(last_sequence=sequence, last_hash=previous)
    assert previous != GENESIS_HASH
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # what autovacuum does after a bulk load in production
    return sponsor, agents


def measure(client, url: str, rounds: int):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(url)  # warm caches and connections
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    timings.sort()
    return {
        "p50": statistics.median(timings),
        "p95": timings[int(len(timings) * 0.95) - 1],
        "max": timings[-1],
        "queries": len(queries),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    fresh_database()

    import django

    django.setup()
    from django.test import Client

    started = time.perf_counter()
    sponsor, agents = populate(args.requests, args.events)
    print(
        f"populated {args.requests} pending requests and {args.events} audit events "
        f"in {time.perf_counter() - started:.1f} s"
    )
    client = Client()
    client.force_login(sponsor)
    from approvals.models import AccessRequest
    from frontend.forms import inbox_cursor

    middle = AccessRequest.objects.order_by("decision_deadline", "pk")[args.requests // 2]
    pages = {
        "inbox": "/inbox/",
        "inbox (htmx refresh)": "/inbox/",
        "inbox (search words)": "/inbox/?q=row+123",
        "inbox (search privilege)": "/inbox/?q=payments-db%3Awrite",
        "inbox (agent + risk)": f"/inbox/?agent={agents[3].pk}&risk=high",
        "inbox (older than 1 h)": "/inbox/?age=1h",
        "inbox (agent + task)": f"/inbox/?agent={agents[3].pk}&task=t3",
        "inbox (page in the middle)": "/inbox/?"
        + urlencode({"after": inbox_cursor((middle.decision_deadline, middle.pk))}),
        "dashboard": "/",
        "audit (latest 50)": "/audit/",
        "audit (agent filter)": f"/audit/?agent={agents[3].pk}",
        "audit (page 100, keyset)": f"/audit/?before={args.events - 5000}",
        "grants": "/grants/",
        "agents": "/agents/",
    }
    print(f"\n{'page':30} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'queries':>8}  target")
    for name, url in pages.items():
        if "htmx" in name:
            client.defaults["HTTP_HX_REQUEST"] = "true"
        figures = measure(client, url, args.rounds)
        client.defaults.pop("HTTP_HX_REQUEST", None)
        verdict = "met" if figures["p95"] <= 150 else "MISSED"
        target = f"p95 <= 150 ms: {verdict}" if name.startswith(("inbox", "audit")) else ""
        print(
            f"{name:30} {figures['p50']:8.1f} {figures['p95']:8.1f} {figures['max']:8.1f} "
            f"{figures['queries']:8d}  {target}"
        )


if __name__ == "__main__":
    main()
