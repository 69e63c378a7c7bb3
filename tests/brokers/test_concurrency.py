"""Racing callers, on the database the suite runs on (PostgreSQL in CI): two fetches of one
grant's credential deliver exactly one; a fetch racing the grant's revocation never leaves a
live role for an ended grant."""

import threading

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from approvals.models import Grant
from audit.services import verify_chain
from brokers.models import BrokeredCredential
from tests.brokers.conftest import ADMIN_DSN, submit

pytestmark = pytest.mark.django_db(transaction=True)


def race(*actions):
    barrier = threading.Barrier(len(actions))
    results, errors = [None] * len(actions), []

    def run(index, action):
        try:
            barrier.wait()
            results[index] = action()
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def members_of(group: str) -> list[str]:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        return [
            row[0]
            for row in admin.execute(
                "SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid "
                "JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = %s",
                [group],
            )
        ]


def agent_client(signer, agent):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
    return client


def fetcher(signer, agent, grant_id):
    client = agent_client(signer, agent)
    return lambda: client.post(f"/api/v1/grants/{grant_id}/credential")


def test_two_concurrent_fetches_deliver_exactly_one_credential(
    agent_api, agent, signer, read_broker, pg_target
):
    grant_id = submit(agent_api).json()["grant"]["id"]

    answers = race(*(fetcher(signer, agent, grant_id) for _ in range(3)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201, 409, 409], [answer.content for answer in answers]
    delivered = next(answer.json() for answer in answers if answer.status_code == 201)
    assert members_of(pg_target["group_role"]) == [delivered["name"]]
    assert BrokeredCredential.objects.get().state == "live"

    agent_api.post(f"/api/v1/grants/{grant_id}/complete")
    call_command("sweep_credentials")
    assert members_of(pg_target["group_role"]) == []


def test_a_fetch_racing_a_revoke_never_leaves_a_live_role_for_an_ended_grant(
    agent_api, agent, signer, sponsor, read_broker, pg_target
):
    grant_ids = [submit(agent_api, task_id=f"race-{n}").json()["grant"]["id"] for n in range(5)]

    def revoker(grant_id):
        person = Client()
        person.force_login(sponsor)
        return lambda: person.post(f"/grants/{grant_id}/revoke/", {"reason": "race"})

    answers = []
    for grant_id in grant_ids:
        fetched, revoked = race(fetcher(signer, agent, grant_id), revoker(grant_id))
        assert revoked.status_code == 302
        assert fetched.status_code in (201, 409), fetched.content
        answers.append(fetched)
    call_command("sweep_credentials")

    assert Grant.objects.filter(pk__in=grant_ids, revoked_at__isnull=True).count() == 0
    assert set(BrokeredCredential.objects.values_list("state", flat=True)) <= {"destroyed"}
    assert members_of(pg_target["group_role"]) == []
    for answer in answers:
        if answer.status_code == 201:
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(answer.json()["secret"]["dsn"], connect_timeout=5).close()
    assert verify_chain().ok
