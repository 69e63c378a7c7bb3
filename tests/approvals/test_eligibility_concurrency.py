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
