"""Server time of the review pages with a 10,000-agent estate: a sponsor's review of a busy
agent (many eligibilities, thousands of requests, grants and tool calls in its period and
before it), the sponsor's review list, the sponsor's agent page and dashboard, and, as a
security admin, the review list over every agent, the dashboard and /posture/.

    .venv/bin/python bench/reviews_bench.py [--agents 10000] [--sponsor-agents 1000]
        [--requests 20000] [--events 100000] [--eligibilities 30] [--busy-requests 4000]
        [--busy-tool-calls 20000] [--history 2] [--rounds 20]
        [--database custody_bench_reviews]

Same method as bench/pages_bench.py (whose `configure`, `fresh_database` and `measure` it
uses): its own PostgreSQL database, dropped, created and migrated afresh; each page rendered
through Django's test client in-process with production settings (DEBUG off), so a figure is
server time (routing, middleware, queries, templates; no network, no browser). Per page it
prints, side by side, the median, p95 and max over --rounds requests after one warm-up, the
median CPU time of this process, the SQL queries the page ran and its size.

The estate: --agents agents, --sponsor-agents of them sponsored by the one person measured (the
rest by 20 others), each with the object permissions registration gives, eligible for three
privileges; reviews every agent has had (--history completed ones, 90 days apart) and an open
one for each agent whose review is due (the sponsor's agents are due over a 40-day campaign, a
third of them now, those due a week ago escalated); --requests requests over the last year
(each approved one with its grant) and --events `tool.called` audit events under those grants.
The busy agent is one of the sponsor's: eligible for --eligibilities privileges, of which a few
were used only before its open review's period and a few never; it filed --busy-requests
requests over the last 180 days (its period is the last 90) with their grants and
--busy-tool-calls tool calls. Rows are written directly (bulk_create), not through the
services: a bench's seed is not evidence; the audit events are hash-chained so the chain still
verifies. A page's time depends on the rows it reads, not on how they were written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RISKS = ["low", "medium", "high", "critical"]
OTHER_SPONSORS = 20
PERIOD_DAYS = 90  # the busy agent's open review covers the last 90 days
UNUSED_EVER = 3  # the busy agent's last eligibilities: never used...
USED_BEFORE_PERIOD = 3  # ...and the ones before them: used only before the period


def populate(args):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType
    from django.db import connection
    from django.utils import timezone
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from agents.models import Agent, TrustDomain
    from agents.services import SPONSOR_PERMISSIONS, TEAM_PERMISSIONS, trust_domain_save
    from approvals.models import Eligibility, Privilege, Review
    from approvals.services import privilege_save
    from audit.services import Actor

    actor = Actor.system("bench")
    now = timezone.now()
    today = timezone.localdate(now)
    user_model = get_user_model()
    sponsor = user_model.objects.create_user("sponsor", password="bench-password-1")
    user_model.objects.create_user("security", password="bench-password-1", is_superuser=True)
    owners = [
        user_model.objects.create_user(f"owner-{n:02d}", password="bench-password-1")
        for n in range(OTHER_SPONSORS)
    ]
    team = Group.objects.create(name="bench-team")
    sponsor.groups.add(team)
    trust_domain_save(
        domain=TrustDomain(name="bench.test", kind=TrustDomain.Kind.SPIFFE, jwks={"keys": []}),
        actor=actor,
        created=True,
    )
    privileges = [
        privilege_save(
            privilege=Privilege(
                resource=f"system-{n:02d}", action="write" if n % 2 else "read", risk=RISKS[n % 4]
            ),
            actor=actor,
            created=True,
        )
        for n in range(max(args.eligibilities, 4))
    ]

    def review_due(n: int):
        if n < args.sponsor_agents:  # the sponsor's campaign: a third due now or already
            return today + timedelta(days=(n * 7) % 40 - 13)
        return today + timedelta(days=(n * 7) % 180 - 13)

    statuses = ["active"] * 18 + ["suspended", "retired"]
    agents = Agent.objects.bulk_create(
        [
            Agent(
                spiffe_id=f"spiffe://bench.test/agents/a{n}",
                name=f"Agent {n:05d}",
                description=f"Reconciles ledger {n} against the bank's statements.",
                sponsor=sponsor if n < args.sponsor_agents else owners[n % OTHER_SPONSORS],
                team=team,
                status="active" if n < 2 else statuses[n % len(statuses)],
                review_due=review_due(n),
                created_at=now - timedelta(days=400),
                dormant_at=now if n % 31 == 7 else None,
                orphaned_at=now if n % 97 == 5 else None,
                orphan_reason="sponsor_inactive" if n % 97 == 5 else "",
            )
            for n in range(args.agents)
        ],
        batch_size=2000,
    )
    # auto_now_add ignored the value given: registered 400 days ago, before any review.
    Agent.objects.update(created_at=now - timedelta(days=400))
    busy = agents[1]
    content_type = ContentType.objects.get_for_model(Agent)
    permission = {
        codename: Permission.objects.get(content_type=content_type, codename=codename)
        for codename in {p.split(".")[1] for p in SPONSOR_PERMISSIONS + TEAM_PERMISSIONS}
    }
    UserObjectPermission.objects.bulk_create(
        [
            UserObjectPermission(
                permission=permission[p.split(".")[1]],
                user_id=agent.sponsor_id,
                content_type=content_type,
                object_pk=str(agent.pk),
            )
            for agent in agents
            for p in SPONSOR_PERMISSIONS
        ],
        batch_size=5000,
    )
    GroupObjectPermission.objects.bulk_create(
        [
            GroupObjectPermission(
                permission=permission[p.split(".")[1]],
                group=team,
                content_type=content_type,
                object_pk=str(agent.pk),
            )
            for agent in agents
            for p in TEAM_PERMISSIONS
        ],
        batch_size=5000,
    )
    eligible = [
        Eligibility(agent=agent, privilege=privileges[(n + k) % 4], granted_by="bench")
        for n, agent in enumerate(agents)
        if agent is not busy and agent.status != "retired"
        for k in range(3)
    ]
    eligible += [
        Eligibility(
            agent=busy, privilege=privilege, granted_by="bench", created_at=now - timedelta(400)
        )
        for privilege in privileges[: args.eligibilities]
    ]
    Eligibility.objects.bulk_create(eligible, batch_size=5000)
    history = seed_reviews(args, agents, busy, now, today)
    seed_use(args, agents, busy, privileges, now)
    with connection.cursor() as cursor:
        # What autovacuum does after a bulk load in production (since PostgreSQL 13 it also
        # vacuums insert-only tables such as the audit log, which lets index-only scans skip
        # the heap).
        cursor.execute("VACUUM ANALYZE")
    busy_review = Review.objects.get(agent=busy, status=Review.Status.OPEN)
    return sponsor, busy, busy_review, history


def seed_reviews(args, agents, busy, now, today):
    """--history completed reviews per agent, 90 days apart, the latest 90 days ago; an open
    one for every active agent whose review is due (escalated a week after its due date)."""
    from approvals.models import Review

    rows = []
    for agent in agents:
        for k in range(args.history, 0, -1):
            end = now - timedelta(days=PERIOD_DAYS * k)
            rows.append(
                Review(
                    agent=agent,
                    period_start=end - timedelta(days=PERIOD_DAYS),
                    period_end=end,
                    due=(end - timedelta(days=2)).date(),
                    status="completed" if (agent.pk + k) % 9 else "expired",
                    opened_at=end - timedelta(days=2),
                    closed_at=end,
                    reviewer_id=agent.sponsor_id if (agent.pk + k) % 9 else None,
                    verdict="attest" if (agent.pk + k) % 9 else "",
                    decisions={},
                )
            )
        due = agent.review_due if agent is not busy else today
        if agent.status == "active" and due <= today:
            rows.append(
                Review(
                    agent=agent,
                    period_start=now - timedelta(days=PERIOD_DAYS),
                    period_end=now - timedelta(days=(today - due).days),
                    due=due,
                    opened_at=now - timedelta(days=(today - due).days),
                    escalated_at=now if due <= today - timedelta(days=7) else None,
                )
            )
    Review.objects.bulk_create(rows, batch_size=5000)
    return len(rows)


def seed_use(args, agents, busy, privileges, now):
    """Requests over the last year across the estate, the busy agent's over the last 180 days,
    each approved one with its grant, and tool calls under those grants as audit events."""
    from approvals.models import AccessRequest, Grant

    def request_row(n: int, agent, privilege, created) -> AccessRequest:
        status = ["approved", "approved", "approved", "denied", "expired"][n % 5]
        return AccessRequest(
            agent=agent,
            privilege=privilege,
            task_id=f"task-{n}",
            intent={"action": "reconcile", "target": f"ledger {n}", "justification": "bench"},
            context={"environment": "production"},
            duration_seconds=600,
            status=status,
            policy_outcome="request",
            policy_ids=["active-agents-may-request"],
            approvals_required=1,
            created_at=created,
            decided_at=created + timedelta(minutes=3),
            decision_deadline=created + timedelta(hours=1),
        )

    live = [agent for agent in agents if agent.status != "retired" and agent is not busy]
    rows = [
        request_row(
            n,
            live[(n * 13) % len(live)],
            privileges[n % 4],
            now - timedelta(minutes=(n * 37) % (365 * 24 * 60)),
        )
        for n in range(args.requests)
    ]
    # The busy agent: its used eligibilities over 180 days; a few only before its period.
    used = privileges[: args.eligibilities - UNUSED_EVER]
    before_only = set(p.pk for p in used[-USED_BEFORE_PERIOD:])
    for n in range(args.busy_requests):
        privilege = used[n % len(used)]
        days = (n * 0.37) % 180
        if privilege.pk in before_only:
            days = PERIOD_DAYS + 1 + (n * 0.37) % (180 - PERIOD_DAYS - 1)
        rows.append(
            request_row(args.requests + n, busy, privilege, now - timedelta(days=days, minutes=5))
        )
    requests = AccessRequest.objects.bulk_create(rows, batch_size=5000)
    grants = Grant.objects.bulk_create(
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
            for access_request in requests
            if access_request.status == "approved"
        ],
        batch_size=5000,
    )
    busy_grants = [grant for grant in grants if grant.agent_id == busy.pk]
    other_grants = [grant for grant in grants if grant.agent_id != busy.pk]
    calls = [
        (grant, grant.issued_at + timedelta(seconds=1 + n % 500))
        for n, grant in ((n, other_grants[(n * 7) % len(other_grants)]) for n in range(args.events))
    ]
    calls += [
        (grant, grant.issued_at + timedelta(seconds=1 + n % 500))
        for n, grant in (
            (n, busy_grants[(n * 7) % len(busy_grants)]) for n in range(args.busy_tool_calls)
        )
    ]
    chain_tool_calls(calls)


def chain_tool_calls(calls) -> None:
    """`tool.called` events, in time order, appended to the hash chain."""
    from audit.models import AuditChainHead, AuditEvent
    from audit.partitions import partition_cover

    calls.sort(key=lambda call: call[1])
    head = AuditChainHead.objects.get(id=1)
    previous, sequence = head.last_hash, head.last_sequence
    # Written past the head before it moves: the partitions they land in are made first.
    partition_cover(through=sequence + len(calls), size=max(len(calls), 10_000))
    batch = []
    for grant, moment in calls:
        sequence += 1
        event = AuditEvent(
            sequence=sequence,
            occurred_at=moment,
            actor_type="agent",
            actor_id=f"agent-{grant.agent_id}",
            verb="tool.called",
            agent_id=grant.agent_id,
            access_request_id=grant.access_request_id,
            grant_id=grant.pk,
            data={"tool": "sql.select", "target": "ledger", "outcome": "success"},
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--sponsor-agents", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--eligibilities", type=int, default=30)
    parser.add_argument("--busy-requests", type=int, default=4_000)
    parser.add_argument("--busy-tool-calls", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--database", default="custody_bench_reviews")
    args = parser.parse_args()
    if args.eligibilities <= UNUSED_EVER + USED_BEFORE_PERIOD or args.sponsor_agents < 2:
        parser.error("--eligibilities must exceed 6 and --sponsor-agents be at least 2")
    sys.path.insert(0, str(ROOT))
    from bench.pages_bench import configure, fresh_database, measure

    configure(args.database)
    os.environ["CUSTODY_VAR_DIR"] = f"/tmp/custody-bench-reviews-{args.database}"
    fresh_database(args.database)

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from approvals.models import AccessRequest, Review
    from audit.models import AuditEvent

    started = time.perf_counter()
    sponsor, busy, busy_review, _ = populate(args)
    open_reviews = Review.objects.filter(status="open")
    print(
        f"seeded {args.agents} agents ({args.sponsor_agents} of one sponsor), "
        f"{AccessRequest.objects.count()} requests, {AuditEvent.objects.count()} audit events, "
        f"{Review.objects.count()} reviews ({open_reviews.count()} open, "
        f"{open_reviews.filter(agent__sponsor=sponsor).count()} of them the sponsor's, "
        f"{open_reviews.filter(escalated_at__isnull=False).count()} escalated) in "
        f"{time.perf_counter() - started:.1f} s (PostgreSQL, DEBUG off, {args.rounds} rounds; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    in_period = AccessRequest.objects.filter(
        agent=busy, created_at__gte=busy_review.period_start
    ).count()
    print(
        f"busy agent #{busy.pk}: eligible for {args.eligibilities} privileges, "
        f"{in_period} of its {args.busy_requests} requests in its review's period, "
        f"{AuditEvent.objects.filter(agent_id=busy.pk).count()} tool calls"
    )
    as_sponsor, as_security = Client(), Client()
    as_sponsor.force_login(sponsor)
    as_security.force_login(get_user_model().objects.get(username="security"))
    pages = [
        (f"review #{busy_review.pk} (busy agent)", f"/reviews/{busy_review.pk}/", as_sponsor),
        ("reviews (sponsor)", "/reviews/", as_sponsor),
        (f"agent #{busy.pk} (busy agent)", f"/agents/{busy.pk}/", as_sponsor),
        ("dashboard (sponsor)", "/", as_sponsor),
        ("reviews (security admin)", "/reviews/", as_security),
        ("dashboard (security admin)", "/", as_security),
        ("posture (security admin)", "/posture/", as_security),
    ]
    header = (
        f"{'page':34} {'median':>8} {'p95':>8} {'max':>8} {'Python':>8} {'queries':>8} {'KiB':>7}"
    )
    print(f"\n{header}\n{'':34} {'ms':>8} {'ms':>8} {'ms':>8} {'CPU ms':>8}")
    for name, url, client in pages:
        figures = measure(client, url, args.rounds)
        print(
            f"{name[:34]:34} {figures['median']:8.1f} {figures['p95']:8.1f} "
            f"{figures['max']:8.1f} {figures['cpu']:8.1f} {figures['queries']:8d} "
            f"{figures['kib']:7.1f}"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
