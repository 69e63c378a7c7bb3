"""Tool calls (drifting ones, with flags and a drift policy that ends the grant) race a
person's revoke: real threads, every call through HTTP. What breaks when a lock is taken out of
order is a deadlock (HTTP 500), a call recorded after the grant ended, or a grant ended twice."""

import threading
from collections import Counter

import pytest
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from approvals.models import Grant
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
