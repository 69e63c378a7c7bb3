"""What an agent is refused is evidence too: refused tool calls, token refreshes and cancels each
leave an audit event, within a per-agent budget so that a flood cannot fill the log."""

import datetime as dt

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from approvals.models import AccessRequest
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals.conftest import submit
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db


def ended_grant(agent_api, task_id="task-1") -> int:
    grant_id = submit(agent_api, task_id=task_id).json()["grant"]["id"]
    assert agent_api.post(f"/api/v1/grants/{grant_id}/complete").status_code == 200
    return grant_id


def tool_call(client, grant_id):
    return client.post(
        f"/api/v1/grants/{grant_id}/tool-calls",
        {"tool": "sql.select", "target": "ledger", "outcome": "success"},
        format="json",
    )


def test_a_refused_tool_call_is_evidence(agent_api, agent, privileges):
    grant_id = ended_grant(agent_api)
    response = tool_call(agent_api, grant_id)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "grant_not_active"
    event = AuditEvent.objects.get(verb="tool.refused")
    assert (event.agent_id, event.grant_id, event.actor_id) == (agent.pk, grant_id, agent.spiffe_id)
    assert event.data == {
        "why": "grant_not_active",
        "tool": "sql.select",
        "target": "ledger",
        "outcome": "success",
    }
    assert not AuditEvent.objects.filter(verb="tool.called").exists()
    assert verify_chain().ok


def test_a_refused_token_refresh_is_evidence(agent_api, agent, privileges):
    grant_id = ended_grant(agent_api)
    response = agent_api.post(f"/api/v1/grants/{grant_id}/token")
    assert response.status_code == 409
    event = AuditEvent.objects.get(verb="token.refused")
    assert (event.agent_id, event.grant_id) == (agent.pk, grant_id)
    assert event.data == {"why": "grant_not_active", "ended_reason": "completed"}


def test_a_refused_cancel_is_evidence_and_changes_nothing(agent_api, agent, privileges):
    request_id = submit(agent_api).json()["id"]  # granted at once: nothing left to cancel
    response = agent_api.post(f"/api/v1/requests/{request_id}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "request_not_pending"
    assert AccessRequest.objects.get(pk=request_id).status == "approved"
    event = AuditEvent.objects.get(verb="request.cancel_refused")
    assert (event.agent_id, event.access_request_id) == (agent.pk, request_id)
    assert event.data == {"why": "request_not_pending", "status": "approved"}
    assert not AuditEvent.objects.filter(verb="request.cancelled").exists()


def test_a_flood_of_refusals_is_audited_within_each_agents_budget(
    agent_api, agent, privileges, signer, sponsor, team
):
    budget = settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE
    grant_id = ended_grant(agent_api)
    # The budget is per clock minute: start the flood at a minute's beginning so that a loaded
    # machine cannot carry it over into the next minute's fresh budget.
    next_minute = timezone.now().replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    with time_machine.travel(next_minute, tick=True):
        for _ in range(budget + 5):
            assert tool_call(agent_api, grant_id).status_code == 409
    assert AuditEvent.objects.filter(verb="tool.refused").count() == budget
    last = AuditEvent.objects.filter(verb="tool.refused").order_by("sequence").last()
    assert last.data["budget_note"] == "last audited event this minute"

    other = AgentFactory(sponsor=sponsor, team=team)
    other_api = APIClient()
    other_api.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(other.spiffe_id)}")
    other_grant_id = ended_grant(other_api, task_id="task-other")
    assert tool_call(other_api, other_grant_id).status_code == 409
    assert AuditEvent.objects.filter(verb="tool.refused", agent_id=other.pk).count() == 1
