"""The sponsor grants and removes eligibility while the agent keeps asking: every request is
decided on the eligibility that committed before it, never on a half-seen one. Real threads,
every call through HTTP; on PostgreSQL the agent row lock (approvals/services/eligibility.py)
is what orders them."""

import threading
from collections import Counter

import pytest
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from approvals.models import AccessRequest, Eligibility
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals.conftest import intent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.eligibility]

TOGGLES = 8
SUBMITTERS = 2


def test_grant_and_remove_racing_submits_decide_each_request_on_what_committed_first(
    signer, sponsor, agent, privileges
):
    read = privileges["read"]
    statuses: Counter = Counter()
    done = threading.Event()

    def sponsor_toggles():
        web = Client(raise_request_exception=False)
        web.force_login(sponsor)
        try:
            for _ in range(TOGGLES):
                granted = web.post(f"/agents/{agent.pk}/eligibility/", {"privilege": read.pk})
                statuses[f"grant {granted.status_code}"] += 1
                current = Eligibility.objects.in_force().filter(agent=agent).first()
                removed = web.post(f"/agents/{agent.pk}/eligibility/{current.pk}/remove/")
                statuses[f"remove {removed.status_code}"] += 1
        finally:
            done.set()
            connection.close()

    def agent_submits(number: int):
        client = APIClient(raise_request_exception=False)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
        count = 0
        try:
            while not done.is_set() or count < 3:
                count += 1
                response = client.post(
                    "/api/v1/requests",
                    {
                        "privilege": "payments-db:read",
                        "task_id": f"race-{number}-{count}",
                        "duration_seconds": 60,
                        "intent": intent(),
                    },
                    format="json",
                )
                statuses[f"submit {response.status_code}"] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=sponsor_toggles)] + [
        threading.Thread(target=agent_submits, args=(n,)) for n in range(SUBMITTERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert set(statuses) == {"grant 302", "remove 302", "submit 201"}, statuses
    # Replay the evidence in chain order: each request saw exactly the eligibility before it.
    eligible, decided = False, {}
    for verb, request_id in AuditEvent.objects.filter(
        verb__in=["eligibility.granted", "eligibility.removed", "request.created"]
    ).values_list("verb", "access_request_id"):
        if verb == "request.created":
            decided[request_id] = eligible
        else:
            eligible = verb == "eligibility.granted"
    outcomes = dict(AccessRequest.objects.values_list("pk", "status"))
    assert len(decided) == len(outcomes) == statuses["submit 201"]
    mismatched = {
        pk: (outcomes[pk], was_eligible)
        for pk, was_eligible in decided.items()
        if outcomes[pk] != ("approved" if was_eligible else "denied")
    }
    assert mismatched == {}
    assert Eligibility.objects.filter(agent=agent).count() == TOGGLES
    assert not Eligibility.objects.in_force().exists()
    assert verify_chain().ok


def test_limit_changes_racing_submits_decide_each_request_on_the_limits_committed_first(
    signer, sponsor, agent, privileges, settings
):
    """The sponsor keeps changing the eligibility's maximum duration (5 minutes, then none) on
    the agent's page while the agent asks for 10 minutes: each request is approved exactly when
    the limits committed before it allow 10 minutes."""
    from approvals.services import eligibility_grant

    settings.CUSTODY_CUMULATIVE_FACTOR = 0  # many back-to-back grants: no cap sends them to people
    eligibility = eligibility_grant(
        agent=agent, privilege=privileges["read"], by=sponsor, max_duration_seconds=300
    )
    statuses: Counter = Counter()
    done = threading.Event()
    answered = threading.Condition()

    def submits_answered() -> int:
        return sum(count for key, count in statuses.items() if key.startswith("submit"))

    def sponsor_changes():
        web = Client(raise_request_exception=False)
        web.force_login(sponsor)
        url = f"/agents/{agent.pk}/eligibility/{eligibility.pk}/limits/"
        try:
            for _ in range(TOGGLES):
                for minutes in ("", "5"):
                    with answered:
                        before = submits_answered()
                    changed = web.post(url, {"max_duration_minutes": minutes})
                    statuses[f"change {changed.status_code}"] += 1
                    # Each submitter has at most one request in flight when the change commits:
                    # the (SUBMITTERS + 1)th answer after it started after it, so both limits
                    # are really raced against (not a timing assumption: a count of answers).
                    with answered:
                        answered.wait_for(
                            lambda before=before: submits_answered() > before + SUBMITTERS,
                            timeout=60,
                        )
        finally:
            done.set()
            connection.close()

    def agent_submits(number: int):
        client = APIClient(raise_request_exception=False)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
        count = 0
        try:
            while not done.is_set() or count < 3:
                count += 1
                response = client.post(
                    "/api/v1/requests",
                    {
                        "privilege": "payments-db:read",
                        "task_id": f"limits-{number}-{count}",
                        "duration_seconds": 600,
                        "intent": intent(),
                    },
                    format="json",
                )
                with answered:
                    statuses[f"submit {response.status_code}"] += 1
                    answered.notify_all()
        finally:
            connection.close()

    threads = [threading.Thread(target=sponsor_changes)] + [
        threading.Thread(target=agent_submits, args=(n,)) for n in range(SUBMITTERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert set(statuses) == {"change 302", "submit 201"}, statuses
    # Replay the evidence in chain order: each request saw exactly the limits committed before it.
    allows_ten_minutes, decided = False, {}
    for verb, request_id, data in AuditEvent.objects.filter(
        verb__in=["eligibility.updated", "request.created"]
    ).values_list("verb", "access_request_id", "data"):
        if verb == "request.created":
            decided[request_id] = allows_ten_minutes
        else:
            allows_ten_minutes = data["new"]["max_duration_seconds"] is None
    outcomes = dict(AccessRequest.objects.values_list("pk", "status"))
    assert len(decided) == len(outcomes) == statuses["submit 201"]
    mismatched = {
        pk: (outcomes[pk], allowed)
        for pk, allowed in decided.items()
        if outcomes[pk] != ("approved" if allowed else "denied")
    }
    assert mismatched == {}
    assert set(outcomes.values()) == {"approved", "denied"}  # both limits were really seen
    assert AuditEvent.objects.filter(verb="eligibility.updated").count() == 2 * TOGGLES
    assert Eligibility.objects.filter(agent=agent).count() == 1
    assert verify_chain().ok
