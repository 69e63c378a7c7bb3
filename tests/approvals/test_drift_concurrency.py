"""Tool calls (drifting ones, with flags and a drift policy that ends the grant) race a
person's revoke: real threads, every call through HTTP. What breaks when a lock is taken out of
order is a deadlock (HTTP 500), a call recorded after the grant ended, or a grant ended twice."""

import threading
from collections import Counter

import pytest
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from approvals.models import Grant, Policy
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals.conftest import intent
from tests.approvals.test_drift import END_ON_TARGET, use_drift_policy
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db(transaction=True)

REPETITIONS = 10
CALLERS = 3


def agent_client(signer, agent) -> APIClient:
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
    return client


def race(signer, agent, grant_id, sponsor, targets) -> tuple[Counter, int]:
    statuses: Counter = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(CALLERS + 1)

    def caller(target):
        client = agent_client(signer, agent)
        try:
            barrier.wait()
            for _ in range(5):
                response = client.post(
                    f"/api/v1/grants/{grant_id}/tool-calls",
                    {"tool": "sql", "target": target, "action": "write", "outcome": "success"},
                    format="json",
                )
                with lock:
                    statuses[response.status_code] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=caller, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    web = Client(raise_request_exception=False)
    web.force_login(sponsor)
    barrier.wait()
    revoked = web.post(f"/grants/{grant_id}/revoke/", {"reason": "drift drill"}).status_code
    for thread in threads:
        thread.join(timeout=60)
    return statuses, revoked


def check(grant_id) -> dict:
    events = list(
        AuditEvent.objects.filter(grant_id=grant_id)
        .order_by("sequence")
        .values_list("verb", flat=True)
    )
    ended_at = events.index("grant.revoked") if "grant.revoked" in events else len(events)
    grant = Grant.objects.get(pk=grant_id)
    return {
        "ended": grant.revoked_at is not None,
        "endings": events.count("grant.revoked"),
        "called_after_end": "tool.called" in events[ended_at:],
        "flags_without_call": events.count("grant.drift_flagged")
        > events.count("tool.called") + events.count("tool.refused"),
    }


@pytest.mark.parametrize("policy", ["shipped", "end"])
def test_drifting_tool_calls_race_a_revoke(trust_domain, signer, sponsor, team, privileges, policy):
    if policy == "end":
        use_drift_policy(END_ON_TARGET)
    problems = []
    for repetition in range(REPETITIONS):
        agent = AgentFactory(
            spiffe_id=f"spiffe://example.test/agents/drift-{policy}-{repetition}",
            sponsor=sponsor,
            team=team,
        )
        client = agent_client(signer, agent)
        grant_id = client.post(
            "/api/v1/requests",
            {
                "privilege": "payments-db:read",
                "task_id": f"drift-{repetition}",
                "duration_seconds": 600,
                "intent": intent(),
            },
            format="json",
        ).json()["grant"]["id"]
        # The last caller's target is outside the intent: under "end", it ends the grant too.
        statuses, revoked = race(
            signer, agent, grant_id, sponsor, ["invoices 2026-11"] * (CALLERS - 1) + ["payroll"]
        )
        outcome = {
            "revoke": revoked,
            "5xx": sum(n for status, n in statuses.items() if status >= 500),
            "other": sorted(set(statuses) - {201, 409}),
            **check(grant_id),
        }
        expected = {
            "revoke": 302,
            "5xx": 0,
            "other": [],
            "ended": True,
            "endings": 1,
            "called_after_end": False,
            "flags_without_call": False,
        }
        if outcome != expected:
            problems.append((repetition, outcome, dict(statuses)))
    assert problems == []
    assert verify_chain().ok


def test_a_drift_policy_change_in_admin_races_drifting_tool_calls(
    trust_domain, signer, sponsor, team, privileges, admin_user
):
    """Callers keep straying while an admin changes the drift policy to END_ON_TARGET. No call
    fails; a call that starts once the save has answered is decided by the new policy (its
    grant ends, reason drift, or it is refused because it already has); each grant ends once."""
    drift = Policy.objects.get(name="drift-default")
    agents = [
        AgentFactory(
            spiffe_id=f"spiffe://example.test/agents/racer-{n}", sponsor=sponsor, team=team
        )
        for n in range(CALLERS)
    ]
    grants = {}
    for racer in agents:
        body = agent_client(signer, racer).post(
            "/api/v1/requests",
            {
                "privilege": "payments-db:read",
                "task_id": "race",
                "duration_seconds": 600,
                "intent": intent(),
            },
            format="json",
        )
        grants[racer.pk] = body.json()["grant"]["id"]
        # The shipped policy is compiled and cached before the race: it flags.
        first = agent_client(signer, racer).post(
            f"/api/v1/grants/{grants[racer.pk]}/tool-calls",
            {"tool": "sql", "target": "payroll", "outcome": "success"},
            format="json",
        )
        assert first.json()["drift"]["outcome"] == "flag"
    changed = threading.Event()
    barrier = threading.Barrier(CALLERS + 1)
    after: list[tuple[int, int, str | None]] = []  # (grant, status, outcome) of late calls
    statuses: Counter = Counter()
    lock = threading.Lock()

    def caller(racer):
        client = agent_client(signer, racer)
        grant_id = grants[racer.pk]
        try:
            barrier.wait()
            late_calls = 0
            # Until three calls have started after the save answered (a bound, not a clock).
            for _ in range(500):
                late = changed.is_set()
                if late:
                    late_calls += 1
                    if late_calls > 3:
                        break
                response = client.post(
                    f"/api/v1/grants/{grant_id}/tool-calls",
                    {"tool": "sql", "target": "payroll", "outcome": "success"},
                    format="json",
                )
                drift = response.json().get("drift") if response.status_code == 201 else None
                with lock:
                    statuses[response.status_code] += 1
                    if late:
                        after.append((grant_id, response.status_code, drift and drift["outcome"]))
        finally:
            connection.close()

    threads = [threading.Thread(target=caller, args=(racer,)) for racer in agents]
    for thread in threads:
        thread.start()
    web = Client(raise_request_exception=False)
    web.force_login(admin_user)
    barrier.wait()
    saved = web.post(
        f"/admin/approvals/policy/{drift.pk}/change/",
        {
            "name": "drift-default",
            "description": "",
            "text": END_ON_TARGET,
            "enabled": "on",
            "revisions-TOTAL_FORMS": "0",
            "revisions-INITIAL_FORMS": "0",
        },
    )
    changed.set()
    for thread in threads:
        thread.join(timeout=60)
    assert saved.status_code == 302
    assert set(statuses) <= {201, 409}, statuses
    assert len(after) == 3 * CALLERS
    assert [late for late in after if late[1] == 201 and late[2] != "end"] == []
    for grant_id in grants.values():
        grant = Grant.objects.get(pk=grant_id)
        assert grant.revoke_reason == "drift"
        ended = AuditEvent.objects.filter(verb="grant.revoked", grant_id=grant_id)
        assert ended.count() == 1
    assert verify_chain().ok
