"""The outbox write path under concurrency, on PostgreSQL: whoever ends a grant (a person
revoking, the agent completing, the expiry sweep, a suspension), exactly one Security Event Token
per stream is written for it, in the ending's transaction; the chain verifies."""

import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from agents.models import Agent
from approvals.models import Grant
from approvals.tasks import sweep_expired_grants
from audit.services import verify_chain
from ssf.models import SecurityEvent, Stream
from tests.factories import ResourceServerFactory
from tests.ssf.conftest import add_stream, submit

pytestmark = pytest.mark.django_db(transaction=True)


def race(*actions):
    barrier = threading.Barrier(len(actions))
    errors = []

    def run(action):
        try:
            barrier.wait()
            action()
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.fixture
def two_streams(resource_server):
    gateway = add_stream(resource_server, delivery=Stream.Delivery.POLL)
    auditor = add_stream(
        ResourceServerFactory(introspection_audiences=["payments-db", "payments-api"]),
        delivery=Stream.Delivery.POLL,
    )
    return gateway, auditor


def test_racing_endings_of_one_grant_write_one_event_per_stream(
    agent_api, privileges, sponsor, agent, two_streams
):
    grants = [
        submit(agent_api, "payments-db:read", task_id=f"t-{n}").json()["grant"]["id"]
        for n in range(6)
    ]
    now = timezone.now()  # three of them are due: the sweep races for those too
    Grant.objects.filter(pk__in=grants[:3]).update(
        issued_at=now - timedelta(seconds=10), expires_at=now - timedelta(seconds=1)
    )

    def revoke(grant_id):
        client = Client()
        client.force_login(sponsor)
        return lambda: client.post(f"/grants/{grant_id}/revoke/", {"reason": "race"})

    def complete(grant_id):
        return lambda: agent_api.post(f"/api/v1/grants/{grant_id}/complete")

    def suspend():
        client = Client()
        client.force_login(sponsor)
        client.post(f"/agents/{agent.pk}/suspend/", {"reason": "race"})

    actions = [revoke(g) for g in grants] + [complete(g) for g in grants]
    race(*actions, sweep_expired_grants, suspend)

    assert Grant.objects.filter(pk__in=grants, revoked_at__isnull=True).count() == 0
    per_grant = Counter(
        (event.grant_id, event.stream_id)
        for event in SecurityEvent.objects.filter(grant_id__isnull=False)
    )
    assert per_grant == {(g, s.pk): 1 for g in grants for s in two_streams}
    assert SecurityEvent.objects.filter(agent_id=agent.pk).count() == 2  # account-disabled
    assert Agent.objects.get(pk=agent.pk).status == Agent.Status.SUSPENDED
    assert verify_chain().ok
