"""RFC 7662 introspection is for registered resource servers, each about its own audiences."""

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from agents.models import Agent
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals.conftest import submit
from tests.factories import AgentFactory, PrivilegeFactory

pytestmark = pytest.mark.django_db


def introspect(client, token):
    return client.post("/api/v1/introspect", {"token": token}, format="json")


def live_token(agent_api, privilege="payments-db:read", task_id="task-1"):
    body = submit(agent_api, privilege, task_id=task_id).json()
    assert body["status"] == "approved", body
    return body["grant"]["access_token"], body["grant"]["id"]


def test_an_agent_that_is_not_a_resource_server_gets_403_and_leaves_evidence(
    agent_api, agent, privileges
):
    token, _ = live_token(agent_api)
    response = introspect(agent_api, token)
    assert response.status_code == 403
    assert response.json()["error"] == "unauthorized_client"  # RFC 6749 §5.2
    error = response.json()["custody_error"]
    assert error["code"] == "not_a_resource_server"
    assert "resource server" in error["message"]
    assert "active" not in response.json()
    event = AuditEvent.objects.get(verb="introspection.forbidden")
    assert event.agent_id == agent.pk
    assert event.actor_id == agent.spiffe_id
    assert event.data["why"] == "not_a_resource_server"
    assert verify_chain().ok


def test_forbidden_introspection_is_audited_within_a_per_agent_budget(
    agent_api, agent, privileges, trust_domain, signer, sponsor, team
):
    token, _ = live_token(agent_api)
    budget = settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE
    for _ in range(budget + 5):
        assert introspect(agent_api, token).status_code == 403
    assert AuditEvent.objects.filter(verb="introspection.forbidden").count() == budget
    # Another agent's flood neither spends nor shares this agent's budget.
    other = AgentFactory(sponsor=sponsor, team=team)
    other_api = APIClient()
    other_api.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(other.spiffe_id)}")
    assert introspect(other_api, token).status_code == 403
    assert AuditEvent.objects.filter(verb="introspection.forbidden", agent_id=other.pk).count() == 1


def test_a_resource_server_learns_nothing_about_tokens_of_an_audience_it_does_not_serve(
    agent_api, privileges, resource_server_api, trust_domain, signer, sponsor, team
):
    PrivilegeFactory(resource="crm", action="read", risk="low")
    crm_token, crm_grant_id = live_token(agent_api, "crm:read", task_id="task-crm")
    payments_token, _ = live_token(agent_api, "payments-db:read", task_id="task-db")

    # The payments-db gateway serves payments-db only.
    assert introspect(resource_server_api, payments_token).json()["active"] is True
    response = introspect(resource_server_api, crm_token)
    assert response.status_code == 200
    assert response.json() == {"active": False}
    refused = AuditEvent.objects.get(verb="introspection.refused")
    assert refused.data["why"] == "audience_not_served"

    crm_gateway = AgentFactory(
        spiffe_id="spiffe://example.test/resource-servers/crm",
        sponsor=sponsor,
        team=team,
        kind=Agent.Kind.RESOURCE_SERVER,
        introspection_audiences=["crm"],
    )
    crm_api = APIClient()
    crm_api.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(crm_gateway.spiffe_id)}")
    answer = introspect(crm_api, crm_token).json()
    assert answer["active"] is True
    assert answer["grant_id"] == crm_grant_id
    assert introspect(crm_api, payments_token).json() == {"active": False}


def test_introspecting_an_ended_grant_leaves_evidence(agent_api, privileges, resource_server_api):
    token, grant_id = live_token(agent_api)
    assert agent_api.post(f"/api/v1/grants/{grant_id}/complete").status_code == 200
    assert introspect(resource_server_api, token).json() == {"active": False}
    event = AuditEvent.objects.get(verb="introspection.refused", grant_id=grant_id)
    assert event.data == {"why": "grant_ended", "ended_reason": "completed"}
    assert event.actor_id == "spiffe://example.test/resource-servers/payments-db"


def test_a_resource_server_must_name_its_audiences_and_an_agent_names_none(sponsor, team):
    with pytest.raises(ValidationError, match="audiences it serves"):
        AgentFactory(sponsor=sponsor, team=team, kind=Agent.Kind.RESOURCE_SERVER)
    with pytest.raises(ValidationError, match="Only a resource server"):
        AgentFactory(sponsor=sponsor, team=team, introspection_audiences=["payments-db"])
    with pytest.raises(ValidationError, match="list of audiences"):
        AgentFactory(
            sponsor=sponsor,
            team=team,
            kind=Agent.Kind.RESOURCE_SERVER,
            introspection_audiences="payments-db",
        )


@pytest.mark.parametrize("body", ["4315", "[]", '"token"', "null"])
def test_a_body_that_is_not_an_object_is_a_400(resource_server_api, body):
    response = resource_server_api.post("/api/v1/introspect", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["custody_error"]["code"] == "invalid_request"


def test_an_agent_that_is_not_active_holds_nothing_whatever_the_policy_says(
    agent_api, agent, privileges, resource_server_api
):
    """The status check is Custody's own, not the policy's: with a policy set that would allow
    anything, a live grant of an agent that is no longer active is still inactive."""
    from approvals.models import Policy
    from approvals.services import policy_save
    from audit.services import Actor
    from tests.factories import PolicyFactory

    token, grant_id = live_token(agent_api)
    default = Policy.objects.get(name="default")
    default.enabled = False
    policy_save(policy_row=default, actor=Actor.system("test"), created=False)
    PolicyFactory(name="allow-everything", text="permit (principal, action, resource);")
    assert introspect(resource_server_api, token).json()["active"] is True
    # The agent's row changes without its grants being ended (as a suspension committing
    # between the grant check and the answer would look): only the status check stands.
    Agent.objects.filter(pk=agent.pk).update(status=Agent.Status.SUSPENDED)
    assert introspect(resource_server_api, token).json() == {"active": False}
    refused = AuditEvent.objects.get(verb="introspection.refused", grant_id=grant_id)
    assert refused.data == {"why": "agent_not_active", "agent_status": "suspended"}
