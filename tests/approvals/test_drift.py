"""Drift: each tool call an agent records under a grant is compared with the grant's declared
intent and privilege, and the drift policy (Cedar, Action::"tool_call") says what it means.
Through the agent API with SVIDs, the request page over HTTP, and the audit chain."""

import pytest
from django.db.models import F

from approvals.models import DriftFlag, Grant, Policy, PolicySetState
from approvals.services import policy_save
from audit.models import AuditEvent
from audit.services import Actor, verify_chain
from tests.approvals.conftest import person_client, submit
from tests.approvals.test_delegation import chain, helper_b, helper_c  # noqa: F401  (fixtures)

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


def use_drift_policy(text: str) -> None:
    """The shipped drift policy's row, changed through the service admin calls."""
    row = Policy.objects.get(name="drift-default")
    row.text = text
    policy_save(policy_row=row, actor=Actor.system("test"), created=False)


def test_a_drift_policy_can_end_the_grant(agent_api, privileges, resource_server_api):
    use_drift_policy(END_ON_TARGET)
    body = submit(agent_api).json()
    grant_id, token = body["grant"]["id"], body["grant"]["access_token"]

    wrong_action = call(agent_api, grant_id, target="invoices 2026-11", action="write").json()
    assert wrong_action["drift"]["outcome"] == "flag"
    assert Grant.objects.get(pk=grant_id).is_active()

    wrong_target = call(agent_api, grant_id, target="payroll").json()
    assert wrong_target["drift"]["outcome"] == "end"
    assert sorted(wrong_target["drift"]["policies"]) == ["any-drift-flags", "wrong-target-ends"]
    grant = Grant.objects.get(pk=grant_id)
    assert grant.revoke_reason == "drift" and not grant.is_active()
    assert resource_server_api.post(
        "/api/v1/introspect", {"token": token}, format="json"
    ).json() == {"active": False}
    assert call(agent_api, grant_id, target="invoices 2026-11").status_code == 409
    assert verify_chain().ok


def test_a_stored_drift_policy_that_does_not_validate_still_flags(agent_api, privileges):
    # Saving refuses it (tests/approvals/test_drift_policy_admin.py); a row written around the
    # service (SQL, a restore) is caught when the set is compiled, and drift is still flagged.
    Policy.objects.filter(name="drift-default").update(
        text='permit (principal, action == Action::"tool_call", resource) when { context.nope };'
    )
    PolicySetState.objects.filter(id=1).update(generation=F("generation") + 1)
    grant_id = granted(agent_api)
    clean = call(agent_api, grant_id, target="invoices 2026-11")
    assert clean.status_code == 201 and clean.json()["drift"] is None
    response = call(agent_api, grant_id, target="payroll")
    assert response.status_code == 201
    assert response.json()["drift"]["policies"] == ["drift-policy-unusable"]


def test_the_shipped_drift_policy_validates_against_its_schema():
    from approvals.drift_policy import drift_policy_problems
    from approvals.policy import DRIFT_DEFAULT_TEXT

    assert drift_policy_problems(DRIFT_DEFAULT_TEXT) == []


# --- "end" down a real delegation chain (A -> B -> C, RFC 8693 token exchange) ----------------


def test_a_drift_end_on_the_parent_ends_every_delegated_grant_audited(
    chain,  # noqa: F811
    privileges,
    resource_server_api,
):
    use_drift_policy(END_ON_TARGET)
    (_, a_api, _, grant_a), (_, _, token_b, grant_b), (_, c_api, token_c, grant_c) = (
        chain["a"],
        chain["b"],
        chain["c"],
    )
    answer = call(a_api, grant_a.pk, target="payroll").json()["drift"]
    assert answer["outcome"] == "end"

    ended = {
        grant.pk: grant
        for grant in Grant.objects.filter(pk__in=[grant_a.pk, grant_b.pk, grant_c.pk])
    }
    assert ended[grant_a.pk].revoke_reason == "drift"
    assert ended[grant_b.pk].revoke_reason == ended[grant_c.pk].revoke_reason == "cascade"
    assert all(grant.revoked_at == ended[grant_a.pk].revoked_at for grant in ended.values())
    revoked = {
        event.grant_id: event.data for event in AuditEvent.objects.filter(verb="grant.revoked")
    }
    assert revoked[grant_a.pk]["reason"] == "drift"
    assert (
        "Drift (target) under any-drift-flags, wrong-target-ends" in revoked[grant_a.pk]["detail"]
    )
    assert revoked[grant_b.pk]["reason"] == revoked[grant_c.pk]["reason"] == "cascade"
    assert revoked[grant_b.pk]["cascade_from"] == revoked[grant_c.pk]["cascade_from"] == grant_a.pk
    flagged = AuditEvent.objects.get(verb="grant.drift_flagged")
    assert flagged.sequence < min(
        AuditEvent.objects.filter(verb="grant.revoked").values_list("sequence", flat=True)
    )
    for token in (token_b, token_c):
        assert resource_server_api.post(
            "/api/v1/introspect", {"token": token}, format="json"
        ).json() == {"active": False}
    assert call(c_api, grant_c.pk, target="ledger 2026-11").status_code == 409
    assert verify_chain().ok


def test_a_drift_end_on_a_sub_agents_grant_ends_it_and_leaves_its_parents(
    chain,  # noqa: F811
    privileges,
):
    use_drift_policy(END_ON_TARGET)
    (_, _, _, grant_a), (_, _, _, grant_b), (_, c_api, _, grant_c) = (
        chain["a"],
        chain["b"],
        chain["c"],
    )
    assert call(c_api, grant_c.pk, target="payroll").json()["drift"]["outcome"] == "end"
    assert Grant.objects.get(pk=grant_c.pk).revoke_reason == "drift"
    assert Grant.objects.get(pk=grant_a.pk).is_active()
    assert Grant.objects.get(pk=grant_b.pk).is_active()
