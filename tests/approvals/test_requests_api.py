import time

import jwt
import pytest
from django.core.management import call_command
from guardian.shortcuts import assign_perm

from agents.services import agent_suspend
from approvals.models import AccessRequest, Grant
from audit.models import AuditEvent
from audit.services import Actor, verify_chain
from tests.approvals.conftest import decide, intent, person_client, submit
from tests.factories import AgentFactory, UserFactory

pytestmark = pytest.mark.django_db


def verbs(**filters):
    return list(AuditEvent.objects.filter(**filters).values_list("verb", flat=True))


def jwks_key(api, kid):
    keys = api.get("/.well-known/jwks.json").json()["keys"]
    return jwt.PyJWK(next(key for key in keys if key["kid"] == kid)).key


def introspect(client, token):
    return client.post("/api/v1/introspect", {"token": token}, format="json").json()


def test_it_runs_an_automatic_request_end_to_end(
    agent_api, api, privileges, resource_server_api, agent
):
    response = submit(agent_api, "payments-db:read", duration=600)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "approved"
    assert body["decision"]["outcome"] == "auto_approve"
    assert body["decision"]["policies"] == ["low-risk-short-read-automatic"]
    assert "automatically" in body["decision"]["reason"]
    token = body["grant"]["access_token"]

    # The token verifies offline against the published JWKS.
    kid = jwt.get_unverified_header(token)["kid"]
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = jwt.decode(token, jwks_key(api, kid), algorithms=["ES256"], audience="payments-db")
    grant = Grant.objects.get(pk=body["grant"]["id"])
    assert claims["sub"] == agent.spiffe_id
    assert claims["scope"] == "payments-db:read"
    assert claims["task_id"] == "task-1"
    assert claims["grant_id"] == grant.pk
    assert claims["exp"] <= grant.expires_at.timestamp()
    assert claims["exp"] - claims["iat"] <= 15 * 60
    assert claims["authorization_details"][0]["approvers"] == ["policy"]
    assert grant.expires_at - grant.issued_at == __import__("datetime").timedelta(seconds=600)

    assert introspect(resource_server_api, token)["active"] is True
    done = agent_api.post(f"/api/v1/grants/{grant.pk}/complete")
    assert done.status_code == 200
    assert done.json()["ended_reason"] == "completed"
    assert introspect(resource_server_api, token) == {"active": False}
    assert agent_api.post(f"/api/v1/grants/{grant.pk}/complete").status_code == 409
    refused = agent_api.post(
        f"/api/v1/grants/{grant.pk}/tool-calls",
        {"tool": "sql", "target": "ledger", "outcome": "success"},
        format="json",
    )
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "grant_not_active"
    # The refusals after the end are evidence too, and a call after completion is drift.
    assert verbs(grant_id=grant.pk) == [
        "grant.issued",
        "token.issued",
        "grant.revoked",
        "introspection.refused",
        "tool.refused",
        "grant.drift_flagged",
    ]
    assert verify_chain().ok


def test_it_routes_high_risk_to_two_distinct_approvers(
    agent_api, privileges, sponsor, backup_approver
):
    body = submit(agent_api, "payments-db:write").json()
    assert body["status"] == "pending"
    assert body["approvals_required"] == 2
    assert "high-risk-two-approvals" in body["decision"]["policies"]

    first = decide(sponsor, body["id"])
    assert first.status_code == 201
    assert first.json()["status"] == "pending"
    assert first.json()["approvals_received"] == 1
    again = decide(sponsor, body["id"])
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_decided"

    second = decide(backup_approver, body["id"])
    assert second.status_code == 201
    assert second.json()["status"] == "approved"
    assert Grant.objects.filter(access_request_id=body["id"]).count() == 1

    events_before = AuditEvent.objects.count()
    polled = agent_api.get(f"/api/v1/requests/{body['id']}").json()
    assert polled["status"] == "approved"
    # Polling only reads: no token is minted, nothing is written; the agent asks for one.
    assert polled["grant"]["access_token"] is None
    assert AuditEvent.objects.count() == events_before
    minted = agent_api.post(polled["grant"]["token_url"])
    assert minted.status_code == 200, minted.content
    claims = jwt.decode(minted.json()["access_token"], options={"verify_signature": False})
    assert claims["authorization_details"][0]["approvers"] == ["sponsor", "backup"]


def test_it_ends_a_request_on_any_deny(agent_api, privileges, sponsor, backup_approver):
    request_id = submit(agent_api, "payments-db:write").json()["id"]
    assert decide(sponsor, request_id, "deny", "not during the freeze").json()["status"] == "denied"
    late = decide(backup_approver, request_id)
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "request_not_pending"
    assert not Grant.objects.filter(access_request_id=request_id).exists()
    assert verbs(access_request_id=request_id) == [
        "request.created",
        "policy.evaluated",
        "decision.recorded",
        "request.denied",
        "decision.refused",
    ]
    denied = AuditEvent.objects.get(verb="request.denied", access_request_id=request_id)
    assert (denied.actor_type, denied.actor_id) == ("user", sponsor.username)


def test_the_initiator_never_approves(agent_api, privileges, sponsor):
    body = submit(
        agent_api, "payments-api:refund", context={"initiated_by": "SPONSOR@example.com"}
    ).json()
    response = decide(sponsor, body["id"])
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "initiator_cannot_approve"
    assert AccessRequest.objects.get(pk=body["id"]).status == "pending"
    assert AuditEvent.objects.filter(verb="decision.refused", data__why="initiator").count() == 1


def test_only_approvers_decide(agent_api, privileges, agent, team, outsider):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    teammate = UserFactory(username="teammate")
    teammate.groups.add(team)  # team members see the agent but may not approve
    assert decide(outsider, request_id).status_code == 404
    forbidden = decide(teammate, request_id)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "not_an_approver"
    assert person_client(outsider).get("/api/v1/approvals/pending").json()["results"] == []


def test_the_privileges_approver_group_may_decide(agent_api, privileges):
    from django.contrib.auth.models import Group

    dba = Group.objects.create(name="dba")
    privileges["refund"].approver_group = dba
    privileges["refund"].save()
    oncall = UserFactory(username="oncall-dba")
    oncall.groups.add(dba)
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    pending = person_client(oncall).get("/api/v1/approvals/pending").json()["results"]
    assert [item["id"] for item in pending] == [request_id]
    assert decide(oncall, request_id).json()["status"] == "approved"


def test_people_need_a_session_and_agents_cannot_decide(agent_api, privileges, api):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    assert api.post(
        f"/api/v1/requests/{request_id}/decisions", {"verdict": "approve"}, format="json"
    ).status_code in (401, 403)
    as_agent = agent_api.post(
        f"/api/v1/requests/{request_id}/decisions", {"verdict": "approve"}, format="json"
    )
    assert as_agent.status_code in (401, 403)
    assert AccessRequest.objects.get(pk=request_id).status == "pending"


def test_a_decision_after_cancel_is_a_conflict(agent_api, privileges, sponsor):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    cancelled = agent_api.post(f"/api/v1/requests/{request_id}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert agent_api.post(f"/api/v1/requests/{request_id}/cancel").status_code == 409
    assert decide(sponsor, request_id).status_code == 409
    assert verbs(access_request_id=request_id) == [
        "request.created",
        "policy.evaluated",
        "request.cancelled",
        "request.cancel_refused",
        "decision.refused",
    ]


def test_a_decision_after_the_deadline_is_refused_without_any_job(agent_api, privileges, sponsor):
    from datetime import timedelta

    from django.utils import timezone

    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    AccessRequest.objects.filter(pk=request_id).update(
        decision_deadline=timezone.now() - timedelta(seconds=1)
    )
    response = decide(sponsor, request_id)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "request_expired"
    assert AccessRequest.objects.get(pk=request_id).status == "expired"
    assert not Grant.objects.exists()


def test_a_suspended_agent_gets_no_grant_at_final_approval(
    agent_api, privileges, agent, sponsor, backup_approver
):
    request_id = submit(agent_api, "payments-db:write").json()["id"]
    decide(sponsor, request_id)
    agent_suspend(agent=agent, actor=Actor.system("test"), reason="incident")
    response = decide(backup_approver, request_id)
    assert response.status_code == 409
    assert not Grant.objects.exists()
    assert AccessRequest.objects.get(pk=request_id).status != "approved"


def test_suspending_an_agent_ends_its_grants_and_tokens(
    agent_api, privileges, agent, resource_server_api
):
    token = submit(agent_api).json()["grant"]["access_token"]
    agent_suspend(agent=agent, actor=Actor.system("test"), reason="kill switch")
    grant = Grant.objects.get()
    assert grant.revoke_reason == "agent_suspended"
    assert introspect(resource_server_api, token) == {"active": False}


def test_token_refresh_works_while_the_grant_lives_and_409s_after(
    agent_api, privileges, resource_server_api
):
    grant_id = submit(agent_api).json()["grant"]["id"]
    fresh = agent_api.post(f"/api/v1/grants/{grant_id}/token")
    assert fresh.status_code == 200
    assert introspect(resource_server_api, fresh.json()["access_token"])["active"] is True
    grant = Grant.objects.get(pk=grant_id)
    from approvals.services import grant_revoke

    grant_revoke(grant=grant, actor=Actor.system("test"), detail="operator")
    response = agent_api.post(f"/api/v1/grants/{grant_id}/token")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "grant_not_active"
    assert introspect(resource_server_api, fresh.json()["access_token"]) == {"active": False}


def test_an_expired_grant_is_not_honoured_even_before_any_job(
    agent_api, privileges, resource_server_api
):
    from datetime import timedelta

    from django.utils import timezone

    body = submit(agent_api).json()
    grant_id, token = body["grant"]["id"], body["grant"]["access_token"]
    Grant.objects.filter(pk=grant_id).update(
        issued_at=timezone.now() - timedelta(seconds=700),
        expires_at=timezone.now() - timedelta(seconds=1),
    )
    assert introspect(resource_server_api, token) == {"active": False}
    assert agent_api.post(f"/api/v1/grants/{grant_id}/token").status_code == 409
    assert agent_api.get("/api/v1/grants?active=true").json()["results"] == []
    assert Grant.objects.get(pk=grant_id).revoke_reason == "expired"


def test_tool_calls_are_evidence_under_the_grant(agent_api, privileges):
    grant_id = submit(agent_api).json()["grant"]["id"]
    response = agent_api.post(
        f"/api/v1/grants/{grant_id}/tool-calls",
        {"tool": "sql.select", "target": "ledger", "outcome": "success", "detail": {"rows": 3}},
        format="json",
    )
    assert response.status_code == 201
    event = AuditEvent.objects.get(verb="tool.called")
    assert event.grant_id == grant_id
    assert event.data["detail"] == {"rows": 3}
    assert "act" not in event.data  # no delegation, no chain to name


def test_an_agent_sees_only_its_own_requests_and_grants(
    agent_api, privileges, trust_domain, signer
):
    from rest_framework.test import APIClient

    body = submit(agent_api).json()
    other = AgentFactory(spiffe_id="spiffe://example.test/agents/other")
    other_api = APIClient()
    other_api.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(other.spiffe_id)}")
    assert other_api.get(f"/api/v1/requests/{body['id']}").status_code == 404
    assert other_api.get(f"/api/v1/grants/{body['grant']['id']}").status_code == 404
    assert other_api.post(f"/api/v1/grants/{body['grant']['id']}/complete").status_code == 404
    assert other_api.get("/api/v1/grants").json()["results"] == []
    assert len(agent_api.get("/api/v1/grants").json()["results"]) == 1


def test_a_toxic_pair_needs_people_whatever_task_the_agent_names(agent_api, privileges, sponsor):
    privileges["read"].toxic_with.add(privileges["refund"])
    refund = submit(agent_api, "payments-api:refund", task_id="t-9").json()
    refund_grant = decide(sponsor, refund["id"]).json()["grant"]
    body = submit(agent_api, "payments-db:read", task_id="t-9").json()
    assert body["status"] == "pending"
    assert body["decision"]["policies"][0] == "toxic-pair-needs-people"
    # Naming another task does not split the pair: the agent holds both halves all the same.
    elsewhere = submit(agent_api, "payments-db:read", task_id="other-task").json()
    assert elsewhere["status"] == "pending"
    assert elsewhere["decision"]["policies"][0] == "toxic-pair-needs-people"
    # Once the refund grant has ended, reading is automatic again.
    assert agent_api.post(f"/api/v1/grants/{refund_grant['id']}/complete").status_code == 200
    assert submit(agent_api, "payments-db:read", task_id="later").json()["status"] == "approved"


def test_critical_is_never_automatic_and_needs_two(agent_api, privileges):
    body = submit(agent_api, "prod-cluster:admin", duration=300).json()
    assert body["status"] == "pending"
    assert body["approvals_required"] == 2


def test_long_poll_holds_until_the_wait_runs_out(agent_api, privileges):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    started = time.monotonic()
    assert agent_api.get(f"/api/v1/requests/{request_id}?wait=1").json()["status"] == "pending"
    assert time.monotonic() - started >= 1
    assert agent_api.get(f"/api/v1/requests/{request_id}?wait=31").status_code == 400
    assert agent_api.get(f"/api/v1/requests/{request_id}?wait=x").status_code == 400


def test_key_rotation_keeps_live_tokens_valid(agent_api, api, privileges, resource_server_api):
    token = submit(agent_api).json()["grant"]["access_token"]
    call_command("rotate_signing_key")
    assert len(api.get("/.well-known/jwks.json").json()["keys"]) == 2
    assert introspect(resource_server_api, token)["active"] is True
    fresh = submit(agent_api, task_id="task-2").json()["grant"]["access_token"]
    assert jwt.get_unverified_header(fresh)["kid"] != jwt.get_unverified_header(token)["kid"]


def test_introspection_needs_workload_identity_and_rejects_non_tokens(
    api, agent_api, privileges, signer, agent, resource_server_api
):
    token = submit(agent_api).json()["grant"]["access_token"]
    assert api.post("/api/v1/introspect", {"token": token}, format="json").status_code == 401
    assert introspect(resource_server_api, "garbage") == {"active": False}
    assert introspect(resource_server_api, signer.mint(agent.spiffe_id)) == {"active": False}
    form = resource_server_api.post(
        "/api/v1/introspect", f"token={token}", content_type="application/x-www-form-urlencoded"
    )
    assert form.json()["active"] is True
    missing = resource_server_api.post("/api/v1/introspect", {}, format="json")
    assert missing.status_code == 400


def test_an_access_token_is_never_an_agent_login(agent_api, privileges):
    from rest_framework.test import APIClient

    token = submit(agent_api).json()["grant"]["access_token"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.get("/api/v1/agents/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] in {"wrong_token_type", "unsupported_algorithm"}


def test_backup_approver_permission_can_be_given_per_agent(agent_api, privileges, agent):
    deputy = UserFactory(username="deputy")
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    assert decide(deputy, request_id).status_code == 404
    assign_perm("agents.approve_for_agent", deputy, agent)
    assert decide(deputy, request_id).json()["status"] == "approved"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"privilege": "nope:read"}, "unknown_privilege", "privilege"),
        ({"privilege": "payments-db"}, "unknown_privilege", "privilege"),
        ({"duration_seconds": 3601}, "duration_exceeds_maximum", "duration_seconds"),
        ({"duration_seconds": "soon"}, "invalid", "duration_seconds"),
        ({"duration_seconds": 0}, "invalid", "duration_seconds"),
        ({"intent": "please"}, "invalid", "intent"),
        ({"intent": {"action": "read"}}, "invalid", "intent"),
        ({"intent": intent(justification="x" * 2001)}, "invalid", "intent"),
        ({"task_id": ""}, "invalid", "task_id"),
        ({"task_id": "has spaces"}, "invalid", "task_id"),
        ({"context": []}, "invalid", "context"),
        ({"context": {"environment": 7}}, "invalid", "context"),
        ({"context": {"blob": "x" * 5000}}, "invalid", "context"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_writes_nothing(agent_api, privileges, body, code, field):
    payload = {
        "privilege": "payments-db:read",
        "task_id": "t",
        "duration_seconds": 60,
        "intent": intent(),
        **body,
    }
    before = AuditEvent.objects.count()
    response = agent_api.post("/api/v1/requests", payload, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert field in error["fields"]
    assert error["message"]
    assert AccessRequest.objects.count() == 0
    assert AuditEvent.objects.count() == before


def test_malformed_and_oversize_bodies(agent_api, privileges):
    broken = agent_api.post("/api/v1/requests", "{not json", content_type="application/json")
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "parse_error"
    huge = agent_api.post("/api/v1/requests", {"privilege": "x" * 70_000}, format="json")
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "payload_too_large"
    assert AccessRequest.objects.count() == 0


def test_every_transition_is_evidence_and_the_chain_verifies(
    agent_api, privileges, sponsor, backup_approver
):
    auto = submit(agent_api).json()
    pending = submit(agent_api, "payments-db:write", task_id="t2").json()
    decide(sponsor, pending["id"])
    decide(backup_approver, pending["id"])
    agent_api.post(f"/api/v1/grants/{auto['grant']['id']}/complete")
    assert verbs(access_request_id=pending["id"]) == [
        "request.created",
        "policy.evaluated",
        "decision.recorded",
        "decision.recorded",
        "grant.issued",
    ]
    call_command("verify_audit")
