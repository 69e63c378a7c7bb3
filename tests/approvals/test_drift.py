"""Drift: each tool call an agent records under a grant is compared with the grant's declared
intent and privilege, and the drift policy (Cedar, Action::"tool_call") says what it means.
Through the agent API with SVIDs, the request page over HTTP, and the audit chain."""

import pytest

from approvals.models import DriftFlag, Grant
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals.conftest import person_client, submit

pytestmark = pytest.mark.django_db

END_ON_TARGET = """
@id("wrong-target-ends")
@drift("end")
permit (principal, action == Action::"tool_call", resource)
when { context.drift.contains("target") };

@id("any-drift-flags")
@drift("flag")
permit (principal, action == Action::"tool_call", resource)
when { context.drifted };
"""


def call(agent_api, grant_id, **body):
    return agent_api.post(
        f"/api/v1/grants/{grant_id}/tool-calls",
        {"tool": "sql.select", "outcome": "success", **body},
        format="json",
    )


def granted(agent_api, privilege="payments-db:read") -> int:
    response = submit(agent_api, privilege)
    assert response.json()["status"] == "approved", response.content
    return response.json()["grant"]["id"]


def test_it_flags_nothing_while_calls_keep_to_the_intent(agent_api, privileges):
    grant_id = granted(agent_api)
    for target in ["invoices 2026-11", "invoices 2026-11/inv-3", ""]:
        response = call(agent_api, grant_id, target=target, action="read")
        assert response.status_code == 201, response.content
        assert response.json()["drift"] is None
    assert not DriftFlag.objects.exists()
    assert not AuditEvent.objects.filter(verb="grant.drift_flagged").exists()


def test_it_flags_a_target_outside_the_intent_tells_the_agent_and_shows_it(
    agent_api, privileges, sponsor
):
    grant_id = granted(agent_api)
    response = call(agent_api, grant_id, target="payroll 2026-11")
    assert response.status_code == 201
    assert response.json()["drift"] == {
        "flag": DriftFlag.objects.get().pk,
        "kinds": ["target"],
        "outcome": "flag",
        "policies": ["drift-flags"],
    }
    grant = Grant.objects.get(pk=grant_id)
    assert grant.is_active()  # the shipped default flags, it does not end
    event = AuditEvent.objects.get(verb="grant.drift_flagged")
    assert event.grant_id == grant_id and event.data["target"] == "payroll 2026-11"
    assert verify_chain().ok

    page = person_client(sponsor).get(f"/requests/{grant.access_request_id}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Drift: 1 tool call strayed from the intent" in html
    assert "Target outside the intent" in html and "payroll 2026-11" in html


def test_the_request_page_hides_drift_from_an_outsider(agent_api, privileges, outsider):
    grant_id = granted(agent_api)
    call(agent_api, grant_id, target="payroll")
    request_id = Grant.objects.get(pk=grant_id).access_request_id
    assert person_client(outsider).get(f"/requests/{request_id}/").status_code == 404


def test_it_flags_an_action_the_privilege_does_not_cover(agent_api, privileges):
    grant_id = granted(agent_api)  # payments-db:read
    assert (
        call(agent_api, grant_id, target="invoices 2026-11", action="read").json()["drift"] is None
    )
    drift = call(agent_api, grant_id, target="invoices 2026-11", action="write").json()["drift"]
    assert drift["kinds"] == ["action"]


def test_it_refuses_a_call_after_completion_and_flags_it(agent_api, privileges):
    grant_id = granted(agent_api)
    assert agent_api.post(f"/api/v1/grants/{grant_id}/complete").status_code == 200
    refused = call(agent_api, grant_id, target="invoices 2026-11")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "grant_not_active"
    assert DriftFlag.objects.get(grant_id=grant_id).kinds == ["after_completion"]
    assert call(agent_api, grant_id, target="invoices 2026-11").status_code == 409
    # Flagged once per grant: a flood of late calls does not flood the evidence.
    assert AuditEvent.objects.filter(verb="grant.drift_flagged", grant_id=grant_id).count() == 1


def test_it_flags_a_burst(agent_api, privileges, settings):
    settings.CUSTODY_DRIFT_BURST = 2
    settings.CUSTODY_DRIFT_WINDOW = 3600
    grant_id = granted(agent_api)
    answers = [call(agent_api, grant_id, target="invoices 2026-11").json() for _ in range(4)]
    assert [answer["drift"] for answer in answers[:2]] == [None, None]
    assert answers[2]["drift"]["kinds"] == ["burst"]
    assert answers[3]["drift"] is None  # one burst flag per window, not one per call


def test_a_drift_policy_can_end_the_grant(
    agent_api, privileges, settings, tmp_path, resource_server_api
):
    policy = tmp_path / "drift.cedar"
    policy.write_text(END_ON_TARGET)
    settings.CUSTODY_DRIFT_POLICY_FILE = str(policy)
    body = submit(agent_api).json()
    grant_id, token = body["grant"]["id"], body["grant"]["access_token"]

    wrong_action = call(agent_api, grant_id, target="invoices 2026-11", action="write").json()
    assert wrong_action["drift"]["outcome"] == "flag"
    assert Grant.objects.get(pk=grant_id).is_active()

    wrong_target = call(agent_api, grant_id, target="payroll").json()
    assert wrong_target["drift"]["outcome"] == "end"
    assert sorted(wrong_target["drift"]["policies"]) == ["any-drift-flags", "wrong-target-ends"]
    grant = Grant.objects.get(pk=grant_id)
    assert grant.revoke_reason == "policy" and not grant.is_active()
    assert resource_server_api.post(
        "/api/v1/introspect", {"token": token}, format="json"
    ).json() == {"active": False}
    assert call(agent_api, grant_id, target="invoices 2026-11").status_code == 409
    assert verify_chain().ok


def test_an_unusable_drift_policy_still_flags(agent_api, privileges, settings, tmp_path):
    policy = tmp_path / "drift.cedar"
    policy.write_text(
        'permit (principal, action == Action::"tool_call", resource) when { context.nope };'
    )
    settings.CUSTODY_DRIFT_POLICY_FILE = str(policy)
    grant_id = granted(agent_api)
    response = call(agent_api, grant_id, target="payroll")
    assert response.status_code == 201
    assert response.json()["drift"]["policies"] == ["drift-policy-unusable"]


def test_the_shipped_drift_policy_validates_against_its_schema():
    from approvals.drift_policy import POLICIES, drift_policy_problems

    assert drift_policy_problems((POLICIES / "drift.cedar").read_text()) == []
