"""A bulk deny in the web inbox racing a person's single approval of one of the same requests:
real threads, every call over HTTP, PostgreSQL when DATABASE_URL names it. Each request is
decided exactly once, nobody gets a 500, nothing deadlocks, the audit chain verifies."""

import threading
import time
from collections import Counter

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from approvals.models import AccessRequest, Decision, Grant
from audit.services import verify_chain
from config.celery import app as celery_app
from tests.approvals.conftest import intent
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db(transaction=True)

REPETITIONS = 12
REQUESTS = 6


@pytest.fixture(autouse=True, scope="module")
def _no_backlog_left_for_a_later_worker():
    """Each decision enqueues notifications on commit and no worker runs here: drop them."""
    yield
    queues = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()} | {"celery"}
    with celery_app.connection_for_write() as broker:
        for queue in sorted(queues):
            broker.default_channel.queue_purge(queue)


def _bulk_deny(person, request_ids, barrier, answers: Counter) -> None:
    client = Client(raise_request_exception=False)
    client.force_login(person)
    try:
        barrier.wait()
        response = client.post(
            "/inbox/deny/",
            {"reason": "A flood, drill.", "request": [str(pk) for pk in request_ids]},
        )
        answers[("bulk", response.status_code)] += 1
    finally:
        connection.close()


def _approve(person, request_id, before: list[int], barrier, answers: Counter) -> None:
    """Approve `request_id` once the bulk deny has reached it (denied those `before` it)."""
    client = APIClient(raise_request_exception=False)
    client.force_login(person)
    try:
        barrier.wait()
        deadline = time.monotonic() + 30
        while (
            AccessRequest.objects.filter(pk__in=before, status="denied").count() < len(before)
            and time.monotonic() < deadline
        ):
            time.sleep(0.001)
        response = client.post(
            f"/api/v1/requests/{request_id}/decisions", {"verdict": "approve"}, format="json"
        )
        answers[("approve", response.status_code)] += 1
    finally:
        connection.close()


def test_a_bulk_deny_racing_a_single_approval_decides_each_request_once(
    settings, signer, sponsor, backup_approver, team, privileges
):
    settings.CUSTODY_MAX_PENDING_PER_AGENT = 1000
    problems = []
    outcomes: Counter = Counter()
    for repetition in range(REPETITIONS):
        agent = AgentFactory(
            spiffe_id=f"spiffe://example.test/agents/raced-{repetition}", sponsor=sponsor, team=team
        )
        assign_perm("agents.approve_for_agent", backup_approver, agent)
        agent_api = APIClient()
        agent_api.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
        ids = [
            agent_api.post(
                "/api/v1/requests",
                {
                    "privilege": "payments-api:refund",
                    "task_id": f"refund-{n}",
                    "duration_seconds": 60,
                    "intent": intent(),
                },
                format="json",
            ).json()["id"]
            for n in range(REQUESTS)
        ]
        # The contested request moves along the batch; the approval is sent once the bulk deny
        # has reached it, so the two meet on that request's lock.
        position = repetition % REQUESTS
        contested = ids[position]
        answers: Counter = Counter()
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=_bulk_deny, args=(sponsor, ids, barrier, answers)),
            threading.Thread(
                target=_approve,
                args=(backup_approver, contested, ids[:position], barrier, answers),
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        requests = AccessRequest.objects.filter(pk__in=ids).prefetch_related("decisions")
        decided = {r.pk: (r.status, [d.verdict for d in r.decisions.all()]) for r in requests}
        winner = decided[contested]
        outcomes[winner[0]] += 1
        expected_others = {pk: ("denied", ["deny"]) for pk in ids if pk != contested}
        grants = Grant.objects.filter(access_request_id__in=ids).count()
        if (
            any(status >= 500 for _, status in answers)
            or sum(answers.values()) != 2
            or {pk: v for pk, v in decided.items() if pk != contested} != expected_others
            or winner not in (("approved", ["approve"]), ("denied", ["deny"]))
            or grants != (1 if winner[0] == "approved" else 0)
        ):
            problems.append((repetition, dict(answers), decided, grants))

    assert problems == []
    assert not Decision.objects.filter(access_request__status="pending").exists()
    assert verify_chain().ok
    print("contested request ended", dict(outcomes))
