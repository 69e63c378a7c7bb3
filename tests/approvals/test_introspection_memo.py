"""Introspection remembers its policy answer (approvals/policy.py, decide_memoised) but is still
continuous: a suspension, a revocation, a policy change and an eligibility removed are each seen
at the very next introspection, in the process that answered before and in every other one."""

import httpx
import pytest
from rest_framework.test import APIClient

from agents.services import agent_suspend
from approvals.models import Eligibility, Grant, Privilege
from approvals.services import eligibility_remove, grant_revoke
from audit.services import Actor
from tests.approvals.conftest import submit
from tests.factories import PolicyFactory, ResourceServerFactory
from tests.workers import Gunicorn

SERVER_ID = "spiffe://example.test/resource-servers/payments-db"
ADMIN = Actor.system("test")


def suspend(agent, grant_id):
    agent_suspend(agent=agent, actor=ADMIN, reason="kill switch in a test")


def revoke(agent, grant_id):
    grant_revoke(grant=Grant.objects.get(pk=grant_id), actor=ADMIN, detail="revoked in a test")


def forbid_by_policy(agent, grant_id):
    PolicyFactory(
        name="no-more-reads",
        text='@id("no-more-reads")\n'
        '@reason("Reads of the payments database are stopped.")\n'
        "forbid (principal, action, resource)\n"
        'when { resource.name == "payments-db:read" };',
    )


def remove_eligibility(agent, grant_id):
    privilege = Privilege.objects.get(resource="payments-db", action="read")
    eligibility = Eligibility.objects.get(agent=agent, privilege=privilege, removed_at=None)
    eligibility_remove(eligibility_id=eligibility.pk, agent=agent, by=agent.sponsor)


CHANGES = {
    "suspension": suspend,
    "revocation": revoke,
    "policy change": forbid_by_policy,
    "eligibility removed": remove_eligibility,
}


def live_token(agent_api):
    body = submit(agent_api, "payments-db:read", task_id="memo-task").json()
    assert body["status"] == "approved", body
    return body["grant"]["access_token"], body["grant"]["id"]


@pytest.fixture
def resource_server_token(db, trust_domain, signer, sponsor, team):
    server = ResourceServerFactory(
        spiffe_id=SERVER_ID, sponsor=sponsor, team=team, introspection_audiences=["payments-db"]
    )
    return signer.mint(server.spiffe_id)


@pytest.mark.django_db
@pytest.mark.parametrize("change", CHANGES)
def test_a_change_is_seen_at_the_very_next_introspection(
    change, agent, agent_api, privileges, resource_server_token
):
    server_api = APIClient()
    server_api.credentials(HTTP_AUTHORIZATION=f"Bearer {resource_server_token}")
    token, grant_id = live_token(agent_api)
    for _ in range(3):  # answered, then remembered
        answer = server_api.post("/api/v1/introspect", {"token": token}, format="json")
        assert answer.json()["active"] is True, answer.json()
    CHANGES[change](agent, grant_id)
    answer = server_api.post("/api/v1/introspect", {"token": token}, format="json")
    assert answer.status_code == 200
    assert answer.json() == {"active": False}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", CHANGES)
def test_every_process_sees_a_change_at_its_very_next_introspection(
    change, agent, agent_api, privileges, resource_server_token
):
    """Two gunicorn workers (processes), each with its own memo, both warmed before the change."""
    token, grant_id = live_token(agent_api)
    web = Gunicorn()
    try:
        headers = {"Authorization": f"Bearer {resource_server_token}"}

        def introspect() -> dict:
            # A new connection each time, so the kernel hands calls to both workers.
            with httpx.Client(timeout=30) as client:
                answer = client.post(
                    f"{web.url}/api/v1/introspect", json={"token": token}, headers=headers
                )
            assert answer.status_code == 200, answer.text
            return answer.json()

        assert all(introspect()["active"] is True for _ in range(12))
        CHANGES[change](agent, grant_id)
        assert [introspect() for _ in range(12)] == [{"active": False}] * 12
    finally:
        web.stop()
