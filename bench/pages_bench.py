"""Server time of every page a person uses, with 10,000 pending requests, as a sponsor of many
agents: dashboard, inbox (first page, its htmx refresh, and searched/filtered pages), a
request page, grants, agents and audit; and, as a security admin, the posture page over
--posture-agents more agents (another sponsor's: statuses, orphans, dormant, overdue reviews)
and --posture-decided requests decided over the last 30 days, each with its grant.

    .venv/bin/python bench/pages_bench.py [--requests 10000] [--agents 200] [--grants 500]
        [--events 100000] [--rounds 30] [--database custody_bench_pages]
        [--posture-agents 10000] [--posture-decided 5000]
        [--inbox-query 'q={agent_name}' --inbox-query 'risk=critical' ...]

Runs against its own PostgreSQL database (dropped, created and migrated afresh), renders each
page through Django's test client in-process with production settings (DEBUG off), so the figure
is server time: routing, middleware, queries, templates; no network, no browser. Prints, per
page, the median and p95 (and max) over --rounds requests after one warm-up, the median CPU
time of this process per request (Django's side only, without PostgreSQL's; steadier than wall
time on a busy machine), the queries it ran, the response size and, for inbox pages, how many
requests it lists.

The inbox is addressed only by URL, so the bench works before and after the inbox learns search,
filters and pagination. Each --inbox-query is appended to /inbox/ with {agent_name},
{agent_id} and {privilege} filled in; a query the inbox ignores (it lists the very requests the
unfiltered first page lists) is printed as "ignored", not as a figure for a search.

Seeding writes rows directly (bulk_create), not through the services: the pending requests,
the grants and their requests carry no audit events of their own, and the audit log is
100,000 synthetic `tool.called` events, hash-chained so the chain still verifies. Agents,
people and privileges go through the services (they are few). A page's time depends on the
rows it reads, not on how they were written.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_QUERIES = ["q={agent_name}", "agent={agent_id}", "risk=critical", "q={privilege}"]
RISKS = [
    # resource, action, risk, share of the pending requests (in tenths)
    ("payments-db", "write", "high", 4),
    ("payments-api", "refund", "medium", 3),
    ("crm", "read", "low", 2),
    ("prod-cluster", "admin", "critical", 1),
]


def configure(database: str) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
            "SECRET_KEY": "bench-only-secret-key-0123456789abcdefghijklmnop",
            "ALLOWED_HOSTS": "testserver,127.0.0.1",
            "DEBUG": "false",
            "CUSTODY_VAR_DIR": f"/tmp/custody-bench-pages-{database}",
            # The seed leaves thousands of requests pending per agent: no flood control here.
            "CUSTODY_MAX_PENDING_PER_AGENT": "1000000",
        }
    )
    sys.path.insert(0, str(ROOT))


def fresh_database(database: str) -> None:
    for sql in (f"DROP DATABASE IF EXISTS {database} WITH (FORCE)", f"CREATE DATABASE {database}"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)


def populate(args):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.utils import timezone

    from agents.models import TrustDomain
    from agents.services import agent_register, trust_domain_save
    from approvals.models import AccessRequest, Grant, Privilege
    from approvals.services import privilege_save
    from audit.models import AuditChainHead, AuditEvent
    from audit.partitions import partition_cover
    from audit.services import Actor

    actor = Actor.system("bench")
    user_model = get_user_model()
    sponsor = user_model.objects.create_user("sponsor", password="bench-password-1")
    team = Group.objects.create(name="bench-team")
    sponsor.groups.add(team)
    trust_domain_save(
        domain=TrustDomain(name="bench.test", kind=TrustDomain.Kind.SPIFFE, jwks={"keys": []}),
        actor=actor,
        created=True,
    )
    agents = [
        agent_register(
            spiffe_id=f"spiffe://bench.test/agents/a{n}",
            name=f"Agent {n:03d}",
            sponsor=sponsor,
            team=team,
            actor=actor,
        )
        for n in range(args.agents)
    ]
    privileges = [
        privilege_save(
            privilege=Privilege(resource=resource, action=action, risk=risk),
            actor=actor,
            created=True,
        )
        for resource, action, risk, _share in RISKS
    ]
    mix = [p for p, (*_, share) in zip(privileges, RISKS, strict=True) for _ in range(share)]
    now = timezone.now()

    def request_row(n: int, status: str) -> AccessRequest:
        privilege = mix[n % len(mix)]
        created = now - timedelta(seconds=(n * 7) % 3000)  # ages from now to 50 min
        return AccessRequest(
            agent=agents[(n * 13) % len(agents)],
            privilege=privilege,
            task_id=f"task-{n}",
            intent={
                "action": "reconcile",
                "target": f"invoice {n}",
                "justification": f"Mismatch {n} found by the nightly run.",
            },
            context={"environment": "production"},
            duration_seconds=600,
            status=status,
            policy_outcome="request",
            policy_ids=["active-agents-may-request"],
            policy_reason="Active agents may ask for catalogued privileges.",
            approvals_required=2 if privilege.risk in ("high", "critical") else 1,
            created_at=created,
            decision_deadline=created + timedelta(seconds=3600 + 600),
            escalation_at=created + timedelta(seconds=1800),
        )

    AccessRequest.objects.bulk_create(
        [request_row(n, "pending") for n in range(args.requests)], batch_size=2000
    )
    approved = AccessRequest.objects.bulk_create(
        [request_row(args.requests + n, "approved") for n in range(args.grants)], batch_size=2000
    )
    Grant.objects.bulk_create(
        [
            Grant(
                agent_id=access_request.agent_id,
                privilege_id=access_request.privilege_id,
                access_request=access_request,
                task_id=access_request.task_id,
                scope=f"{access_request.privilege.resource}:{access_request.privilege.action}",
                issued_at=now - timedelta(seconds=n % 300),
                expires_at=now + timedelta(seconds=3600 + n),
            )
            for n, access_request in enumerate(approved)
        ],
        batch_size=2000,
    )
    head = AuditChainHead.objects.get(id=1)
    previous, sequence = head.last_hash, head.last_sequence
    # Written past the head before it moves: the partitions they land in are made first.
    partition_cover(through=sequence + args.events, size=max(args.events, 10_000))
    batch = []
    for n in range(args.events):
        sequence += 1
        agent = agents[n % len(agents)]
        event = AuditEvent(
            sequence=sequence,
            occurred_at=now,
            actor_type="agent",
            actor_id=agent.spiffe_id,
            verb="tool.called",
            agent_id=agent.pk,
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
    populate_posture(args, now)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # what autovacuum does after a bulk load in production
    middle = AccessRequest.objects.filter(status="pending").order_by("pk")[args.requests // 2]
    return sponsor, agents, privileges, middle


def populate_posture(args, now) -> None:
    """The estate the posture page aggregates: agents of every status and flag (rows written
    directly, no object permissions: the sponsor's own pages do not list them) and requests
    decided by people or by policy over 30 days, each approved one with its grant."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from agents.models import Agent
    from approvals.models import AccessRequest, Grant, Privilege

    user_model = get_user_model()
    user_model.objects.create_user("security", password="bench-password-1", is_superuser=True)
    owner = user_model.objects.create_user("posture-sponsor", password="bench-password-1")
    team = Group.objects.create(name="posture-team")
    statuses = ["active"] * 8 + ["suspended", "retired"]
    agents = Agent.objects.bulk_create(
        [
            Agent(
                spiffe_id=f"spiffe://bench.test/estate/e{n}",
                name=f"Estate agent {n:05d}",
                sponsor=owner,
                team=team,
                status=statuses[n % len(statuses)],
                review_due=(now - timedelta(days=(n % 200) - 100)).date(),
                orphaned_at=now if n % 97 == 0 else None,
                orphan_reason="sponsor_inactive" if n % 97 == 0 else "",
                dormant_at=now if n % 31 == 0 else None,
            )
            for n in range(args.posture_agents)
        ],
        batch_size=2000,
    )
    if not agents:
        return
    privileges = list(Privilege.objects.order_by("pk"))
    outcomes = ["auto_approve"] * 3 + ["request"] * 6 + ["deny"]
    decided = []
    for n in range(args.posture_decided):
        outcome = outcomes[n % len(outcomes)]
        created = now - timedelta(minutes=(n * 37) % (30 * 24 * 60))
        wait = timedelta(seconds=0 if outcome != "request" else 30 + (n * 53) % 7200)
        decided.append(
            AccessRequest(
                agent=agents[(n * 7) % len(agents)],
                privilege=privileges[n % len(privileges)],
                task_id=f"posture-{n}",
                intent={"action": "read", "target": f"row {n}", "justification": "bench"},
                duration_seconds=600,
                status="denied" if outcome == "deny" or n % 11 == 0 else "approved",
                policy_outcome=outcome,
                created_at=created,
                decided_at=created + wait,
                decision_deadline=created + timedelta(hours=1),
            )
        )
    decided = AccessRequest.objects.bulk_create(decided, batch_size=2000)
    Grant.objects.bulk_create(
        [
            Grant(
                agent_id=access_request.agent_id,
                privilege_id=access_request.privilege_id,
                access_request=access_request,
                task_id=access_request.task_id,
                scope="bench",
                issued_at=access_request.decided_at,
                expires_at=access_request.decided_at + timedelta(minutes=10),
            )
            for access_request in decided
            if access_request.status == "approved"
        ],
        batch_size=2000,
    )


REQUEST_LINK = re.compile(r'href="/requests/(\d+)/"')


def measure(client, url: str, rounds: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    first = client.get(url)  # warm caches and connections
    assert first.status_code == 200, (url, first.status_code)
    timings, cpu = [], []
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    timings.sort()
    body = response.content.decode()
    return {
        "median": statistics.median(timings),
        "p95": timings[max(int(round(len(timings) * 0.95)) - 1, 0)],
        "max": timings[-1],
        "cpu": statistics.median(cpu),
        "queries": len(queries),
        "kib": len(response.content) / 1024,
        "listed": set(REQUEST_LINK.findall(body)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--grants", type=int, default=500)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--database", default="custody_bench_pages")
    parser.add_argument("--inbox-query", action="append", dest="inbox_queries")
    parser.add_argument("--posture-agents", type=int, default=10_000)
    parser.add_argument("--posture-decided", type=int, default=5_000)
    args = parser.parse_args()
    configure(args.database)
    fresh_database(args.database)

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    started = time.perf_counter()
    sponsor, agents, privileges, middle = populate(args)
    print(
        f"seeded {args.requests} pending requests over {args.agents} agents of one sponsor, "
        f"{args.grants} live grants, {args.events} audit events, "
        f"{args.posture_agents} more agents and {args.posture_decided} decided requests in "
        f"{time.perf_counter() - started:.1f} s (PostgreSQL, DEBUG off, {args.rounds} rounds; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    client = Client()
    client.force_login(sponsor)
    fill = {
        "agent_name": agents[17 % len(agents)].name,
        "agent_id": agents[17 % len(agents)].pk,
        "privilege": privileges[-1].resource,
    }
    pages = [
        ("dashboard", "/", False),
        ("inbox", "/inbox/", False),
        ("inbox (htmx refresh)", "/inbox/", True),
    ]
    for query in args.inbox_queries or DEFAULT_QUERIES:
        filled = urllib.parse.urlencode(urllib.parse.parse_qsl(query.format(**fill)))
        pages.append((f"inbox ?{filled}", f"/inbox/?{filled}", False))
    pages += [
        (f"request #{middle.pk}", f"/requests/{middle.pk}/", False),
        ("grants", "/grants/", False),
        ("agents", "/agents/", False),
        ("audit (latest)", "/audit/", False),
        ("audit (agent filter)", f"/audit/?agent={agents[3 % len(agents)].pk}", False),
    ]
    pages.append(("posture (security admin)", "/posture/", "security"))
    header = (
        f"{'page':34} {'median':>8} {'p95':>8} {'max':>8} {'Python':>8} {'queries':>8} "
        f"{'KiB':>7}  listed"
    )
    print(f"\n{header}\n{'':34} {'ms':>8} {'ms':>8} {'ms':>8} {'CPU ms':>8}")
    first_page: set[str] | None = None
    security = Client()
    security.force_login(get_user_model().objects.get(username="security"))
    for name, url, htmx in pages:
        if htmx == "security":
            figures = measure(security, url, args.rounds)
        else:
            if htmx:
                client.defaults["HTTP_HX_REQUEST"] = "true"
            figures = measure(client, url, args.rounds)
            client.defaults.pop("HTTP_HX_REQUEST", None)
        listed = ""
        if url.startswith("/inbox/"):
            listed = f"{len(figures['listed'])} requests"
            if url == "/inbox/" and not htmx:
                first_page = figures["listed"]
            elif "?" in url and figures["listed"] == first_page:
                listed += " (ignored: the same requests as the unfiltered first page)"
        print(
            f"{name[:34]:34} {figures['median']:8.1f} {figures['p95']:8.1f} "
            f"{figures['max']:8.1f} {figures['cpu']:8.1f} {figures['queries']:8d} "
            f"{figures['kib']:7.1f}  {listed}"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
