"""Delegation chains (RFC 8693 token exchange): only ever narrower, revoked as one, accountable
to the root. Driven through HTTP and the explain_grant command."""

import importlib
import io
import json
from datetime import timedelta
from urllib.parse import urlencode

import jwt
import pytest
import time_machine
from django.apps import apps as django_apps
from django.contrib.auth.models import Group
from django.core.management import call_command
from rest_framework.test import APIClient

from agents.services import agent_suspend
from approvals.models import AccessRequest, Grant, Policy, PolicyRevision, PolicySetState
from approvals.policy import DEFAULT_POLICY_TEXT
from audit.models import AuditEvent
from audit.services import Actor, verify_chain
from tests.approvals.conftest import decide, intent, submit
from tests.factories import AgentFactory, SponsorProfileFactory, UserFactory

pytestmark = pytest.mark.django_db

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


# --- personas: one sponsor's agents A, B, C; another sponsor's agent D -------------------------


@pytest.fixture
def helper_b(agent, sponsor, team):
    return AgentFactory(
        spiffe_id="spiffe://example.test/agents/ledger-reader",
        name="Ledger reader",
        sponsor=sponsor,
        team=team,
    )


@pytest.fixture
def helper_c(agent, sponsor, team):
    return AgentFactory(
        spiffe_id="spiffe://example.test/agents/row-fetcher",
        name="Row fetcher",
        sponsor=sponsor,
        team=team,
    )


@pytest.fixture
def other_sponsor(db):
    user = UserFactory(username="other-sponsor")
    SponsorProfileFactory(user=user, slack_user_id="UOTHER001")
    return user


@pytest.fixture
def foreign_d(agent, other_sponsor):
    return AgentFactory(
        spiffe_id="spiffe://example.test/agents/audit-exporter",
        name="Audit exporter",
        sponsor=other_sponsor,
        team=Group.objects.create(name="audit-platform"),
    )


def client_for(signer, an_agent) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(an_agent.spiffe_id)}")
    return client


def exchange(client, subject_token, actor_token, *, as_json=False, **fields):
    body = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "actor_token": actor_token,
        "actor_token_type": JWT_TYPE,
        "intent_action": "fetch ledger rows",
        "intent_target": "ledger 2026-11",
        "intent_justification": "Sub-task of the invoice reconciliation.",
        **fields,
    }
    body = {key: value for key, value in body.items() if value is not None}
    if as_json:
        return client.post("/api/v1/token", body, format="json")
    return client.post(
        "/api/v1/token", urlencode(body), content_type="application/x-www-form-urlencoded"
    )


def root_token(agent_api, privilege="payments-db:read", duration=600):
    body = submit(agent_api, privilege, duration=duration).json()
    assert body["status"] == "approved", body
    return body["grant"]["access_token"], Grant.objects.get(pk=body["grant"]["id"])


def error_of(response, status=400):
    """Custody's error envelope; the OAuth endpoints carry it under `custody_error`, beside
    RFC 6749 §5.2's `error` and `error_description`."""
    assert response.status_code == status, response.content
    body = response.json()
    if isinstance(body["error"], str):
        assert body["error_description"] == body["custody_error"]["message"]
        return body["custody_error"]
    return body["error"]


def jwks_key(api, token):
    kid = jwt.get_unverified_header(token)["kid"]
    keys = api.get("/.well-known/jwks.json").json()["keys"]
    return jwt.PyJWK(next(key for key in keys if key["kid"] == kid)).key


def introspect(client, token):
    return client.post("/api/v1/introspect", {"token": token}, format="json").json()


@pytest.fixture
def chain(agent, agent_api, helper_b, helper_c, signer, privileges):
    """A -> B -> C within one sponsor's agents, each link narrower in time."""
    token_a, grant_a = root_token(agent_api)
    response_b = exchange(agent_api, token_a, signer.act(helper_b.spiffe_id), duration_seconds=300)
    assert response_b.status_code == 200, response_b.content
    b_api = client_for(signer, helper_b)
    token_b = response_b.json()["access_token"]
    response_c = exchange(b_api, token_b, signer.act(helper_c.spiffe_id), as_json=True)
    assert response_c.status_code == 200, response_c.content
    return {
        "a": (agent, agent_api, token_a, grant_a),
        "b": (helper_b, b_api, token_b, Grant.objects.get(pk=response_b.json()["grant_id"])),
        "c": (
            helper_c,
            client_for(signer, helper_c),
            response_c.json()["access_token"],
            Grant.objects.get(pk=response_c.json()["grant_id"]),
        ),
        "responses": (response_b, response_c),
    }


# --- the chain ---------------------------------------------------------------------------------


def test_it_delegates_a_three_level_chain_automatically_within_one_sponsor(chain, privileges):
    response_b, response_c = chain["responses"]
    body = response_b.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "payments-db:read"
    assert 0 < body["expires_in"] <= 300
    assert response_b["Cache-Control"] == "no-store"

    grant_a, grant_b, grant_c = chain["a"][3], chain["b"][3], chain["c"][3]
    assert (grant_b.agent, grant_c.agent) == (chain["b"][0], chain["c"][0])
    assert (grant_b.parent_id, grant_c.parent_id) == (grant_a.pk, grant_b.pk)
    assert (grant_a.depth, grant_b.depth, grant_c.depth) == (0, 1, 2)
    # Narrower at every step: B asked for 300 s of A's 600; C took what was left of B's.
    assert grant_b.expires_at < grant_a.expires_at
    assert grant_c.expires_at <= grant_b.expires_at
    assert grant_c.scope == grant_b.scope == grant_a.scope

    request_c = grant_c.access_request
    assert request_c.agent == chain["c"][0]
    assert request_c.parent_grant_id == grant_b.pk
    assert request_c.task_id == grant_a.task_id
    assert request_c.intent["action"] == "fetch ledger rows"
    assert request_c.policy_ids == ["delegation-within-sponsor-automatic"]
    created = AuditEvent.objects.get(verb="delegation.created", access_request_id=request_c.pk)
    assert created.actor_id == chain["b"][0].spiffe_id
    assert created.data["chain"] == [chain[k][0].spiffe_id for k in "abc"]
    assert verify_chain().ok


def test_the_act_claim_nests_prior_actors_and_verifies_with_the_jwks(
    chain, api, resource_server_api, privileges
):
    a, b, c = (chain[k][0].spiffe_id for k in "abc")
    token_b, token_c = chain["b"][2], chain["c"][2]
    claims = jwt.decode(
        token_c, jwks_key(api, token_c), algorithms=["ES256"], audience="payments-db"
    )
    assert claims["sub"] == a  # the subject stays the root agent
    assert claims["act"] == {"sub": c, "act": {"sub": b}}  # current actor outermost
    assert claims["scope"] == "payments-db:read"
    assert claims["grant_id"] == chain["c"][3].pk
    assert claims["exp"] <= chain["c"][3].expires_at.timestamp()
    claims_b = jwt.decode(
        token_b, jwks_key(api, token_b), algorithms=["ES256"], audience="payments-db"
    )
    assert claims_b["act"] == {"sub": b}
    with pytest.raises(jwt.InvalidSignatureError):
        forged = token_c.rsplit(".", 1)[0] + "." + token_b.rsplit(".", 1)[1]
        jwt.decode(forged, jwks_key(api, token_c), algorithms=["ES256"], audience="payments-db")

    answer = introspect(resource_server_api, token_c)
    assert answer["active"] is True
    assert answer["sub"] == a
    assert answer["agent"] == c
    assert answer["act"] == {"sub": c, "act": {"sub": b}}
    assert answer["chain"] == [a, b, c]
    assert answer["delegation_depth"] == 2


def test_the_sub_agent_uses_its_delegated_grant_with_its_own_identity(chain, privileges):
    helper_c, c_api, _, grant_c = chain["c"]
    response = c_api.post(
        f"/api/v1/grants/{grant_c.pk}/tool-calls",
        {"tool": "sql.select", "target": "ledger", "outcome": "success"},
        format="json",
    )
    assert response.status_code == 201, response.content
    # The evidence names the whole delegation chain, root first, down to the caller.
    called = AuditEvent.objects.get(verb="tool.called", grant_id=grant_c.pk)
    assert called.actor_id == helper_c.spiffe_id
    assert called.data["act"] == [chain[k][0].spiffe_id for k in "abc"]
    # The holder of the parent cannot act under the child's grant.
    response = chain["b"][1].post(
        f"/api/v1/grants/{grant_c.pk}/tool-calls",
        {"tool": "sql.select", "target": "ledger", "outcome": "success"},
        format="json",
    )
    assert response.status_code == 404


# --- attenuation: each violation refused with its error --------------------------------------


def test_widening_the_scope_is_refused(agent_api, helper_b, signer, privileges):
    token_a, grant_a = root_token(agent_api)
    for scope in ("payments-db:write", "payments-db:read payments-db:write", "prod-cluster:admin"):
        error = error_of(exchange(agent_api, token_a, signer.act(helper_b.spiffe_id), scope=scope))
        assert error["code"] == "invalid_scope", scope
        assert "scope" in error["fields"]
    assert not AccessRequest.objects.filter(agent=helper_b).exists()
    refused = AuditEvent.objects.filter(verb="delegation.refused", grant_id=grant_a.pk)
    assert [event.data["code"] for event in refused] == ["invalid_scope"] * 3


def test_outliving_the_parent_is_refused_not_clipped(agent_api, helper_b, signer, privileges):
    token_a, grant_a = root_token(agent_api, duration=600)
    for duration in (601, 3600):
        error = error_of(
            exchange(agent_api, token_a, signer.act(helper_b.spiffe_id), duration_seconds=duration)
        )
        assert error["code"] == "invalid_request"
        assert "outlive" in error["message"]
        assert list(error["fields"]) == ["duration_seconds"]
    assert not Grant.objects.filter(agent=helper_b).exists()


def test_a_delegated_task_is_the_parents_or_nests_under_it(agent_api, helper_b, signer, privileges):
    token_a, grant_a = root_token(agent_api)  # task-1
    for task_id in ("another-task", "task-10", "task-1-b", "x/task-1"):
        error = error_of(
            exchange(agent_api, token_a, signer.act(helper_b.spiffe_id), task_id=task_id)
        )
        assert error["code"] == "invalid_request", task_id
        assert list(error["fields"]) == ["task_id"]
        assert "'task-1' or nest under it ('task-1/...')" in error["message"]
    assert not AccessRequest.objects.filter(agent=helper_b).exists()
    refused = AuditEvent.objects.filter(verb="delegation.refused", grant_id=grant_a.pk)
    assert [event.data["code"] for event in refused] == ["invalid_request"] * 4

    nested = exchange(agent_api, token_a, signer.act(helper_b.spiffe_id), task_id="task-1/rows")
    assert nested.status_code == 200, nested.content
    assert Grant.objects.get(pk=nested.json()["grant_id"]).task_id == "task-1/rows"


def test_a_delegation_sees_the_toxic_pair_its_chain_holds_in_another_task(
    agent_api, helper_b, signer, sponsor, privileges
):
    privileges["read"].toxic_with.add(privileges["refund"])
    token_a, _ = root_token(agent_api)  # payments-db:read in task-1
    refund = submit(agent_api, "payments-api:refund", task_id="refunds").json()
    assert decide(sponsor, refund["id"]).status_code == 201  # the root now holds both halves

    response = exchange(agent_api, token_a, signer.act(helper_b.spiffe_id))

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending"
    assert body["decision"]["policies"][0] == "toxic-pair-needs-people"
    assert not Grant.objects.filter(agent=helper_b).exists()


def test_going_deeper_than_the_roots_limit_is_refused(
    agent, agent_api, helper_b, helper_c, signer, privileges
):
    agent.max_delegation_depth = 1
    agent.save(update_fields=["max_delegation_depth"])
    token_a, _ = root_token(agent_api)
    response = exchange(agent_api, token_a, signer.act(helper_b.spiffe_id))
    assert response.status_code == 200, response.content
    b_api = client_for(signer, helper_b)
    error = error_of(
        exchange(b_api, response.json()["access_token"], signer.act(helper_c.spiffe_id))
    )
    assert error["code"] == "invalid_request"
    assert "at most 1 level" in error["message"]
    assert not AccessRequest.objects.filter(agent=helper_c).exists()


def test_an_intermediate_agents_limit_also_binds(agent_api, helper_b, helper_c, signer, privileges):
    helper_b.max_delegation_depth = 0  # B may use what it gets but hand nothing on
    helper_b.save(update_fields=["max_delegation_depth"])
    token_a, _ = root_token(agent_api)
    token_b = exchange(agent_api, token_a, signer.act(helper_b.spiffe_id)).json()["access_token"]
    b_api = client_for(signer, helper_b)
    error = error_of(exchange(b_api, token_b, signer.act(helper_c.spiffe_id)))
    assert error["code"] == "invalid_request"
    assert helper_b.spiffe_id in error["message"]


def test_a_suspended_or_unknown_target_is_refused(agent_api, helper_b, signer, privileges):
    token_a, _ = root_token(agent_api)
    agent_suspend(agent=helper_b, actor=Actor.system("test"))
    error = error_of(exchange(agent_api, token_a, signer.act(helper_b.spiffe_id)))
    assert error["code"] == "invalid_target"
    assert "suspended" in error["message"]
    error = error_of(
        exchange(agent_api, token_a, signer.act("spiffe://example.test/agents/nobody"))
    )
    assert error["code"] == "invalid_target"
    assert not AccessRequest.objects.filter(agent=helper_b).exists()


def test_a_cycle_is_refused(agent, agent_api, helper_b, signer, privileges):
    token_a, _ = root_token(agent_api)
    error = error_of(exchange(agent_api, token_a, signer.act(agent.spiffe_id)))
    assert error["code"] == "invalid_target"  # A -> A
    token_b = exchange(agent_api, token_a, signer.act(helper_b.spiffe_id)).json()["access_token"]
    b_api = client_for(signer, helper_b)
    error = error_of(exchange(b_api, token_b, signer.act(agent.spiffe_id)))
    assert error["code"] == "invalid_target"  # A -> B -> A
    assert "twice" in error["message"]
    assert AccessRequest.objects.filter(agent=agent).count() == 1


def test_only_the_holder_of_a_live_parent_may_delegate(
    agent_api, helper_b, helper_c, signer, privileges
):
    token_a, grant_a = root_token(agent_api)
    b_api = client_for(signer, helper_b)
    error = error_of(exchange(b_api, token_a, signer.act(helper_c.spiffe_id)))
    assert error["code"] == "invalid_request"
    assert error["fields"] == {"subject_token": [error["message"]]}

    error = error_of(exchange(agent_api, "not-a-token", signer.act(helper_c.spiffe_id)))
    assert error["code"] == "invalid_request"
    # A workload identity token is not a Custody access token, and vice versa.
    error = error_of(exchange(agent_api, signer.act(helper_b.spiffe_id), token_a))
    assert error["code"] == "invalid_request"

    assert agent_api.post(f"/api/v1/grants/{grant_a.pk}/complete").status_code == 200
    error = error_of(exchange(agent_api, token_a, signer.act(helper_b.spiffe_id)))
    assert error["code"] == "invalid_request"
    assert "ended" in error["message"]


def test_a_parent_past_its_time_cannot_be_delegated_whatever_the_sweep_did(
    agent, agent_api, helper_b, signer, privileges
):
    token_a, grant_a = root_token(agent_api, duration=600)
    caller = APIClient()
    caller.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id, ttl=3600)}")
    with time_machine.travel(grant_a.expires_at + timedelta(seconds=1), tick=False):
        error = error_of(exchange(caller, token_a, signer.act(helper_b.spiffe_id)))
    assert error["code"] == "invalid_request"
    assert not AccessRequest.objects.filter(agent=helper_b).exists()


def test_malformed_exchanges_get_oauth_errors(agent_api, helper_b, signer, privileges):
    token_a, _ = root_token(agent_api)
    actor = signer.act(helper_b.spiffe_id)
    error = error_of(exchange(agent_api, token_a, actor, grant_type="client_credentials"))
    assert error["code"] == "unsupported_grant_type"
    error = error_of(exchange(agent_api, token_a, None))
    assert error["code"] == "invalid_request"
    assert "actor_token" in error["fields"]
    error = error_of(exchange(agent_api, token_a, actor, actor_token_type="urn:x:saml"))
    assert error["code"] == "invalid_request"
    error = error_of(exchange(agent_api, token_a, actor, intent_action=None))
    assert error["code"] == "invalid_request"
    error = error_of(exchange(agent_api, token_a, actor, intent="{not json"))
    assert error["code"] == "invalid_request"
    # Only agents, by workload identity.
    assert APIClient().post("/api/v1/token", {}).status_code == 401


# --- crossing to another sponsor ---------------------------------------------------------------


def test_a_cross_sponsor_delegation_waits_for_the_other_sponsor(
    agent, agent_api, foreign_d, sponsor, other_sponsor, signer, api, privileges
):
    token_a, grant_a = root_token(agent_api)
    response = exchange(agent_api, token_a, signer.act(foreign_d.spiffe_id), as_json=True)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending"
    assert body["agent"] == foreign_d.spiffe_id
    assert "delegation-across-sponsors-needs-sponsor" in body["decision"]["policies"]
    request_id = body["request_id"]
    assert body["poll"] == f"/api/v1/requests/{request_id}"
    assert not Grant.objects.filter(agent=foreign_d).exists()

    # A's sponsor does not answer for D; the caller cannot see D's request either.
    assert decide(sponsor, request_id).status_code == 404  # not even visible to them
    assert agent_api.get(f"/api/v1/requests/{request_id}").status_code == 404
    d_api = client_for(signer, foreign_d)
    assert d_api.get(f"/api/v1/requests/{request_id}").json()["status"] == "pending"

    response = decide(other_sponsor, request_id)
    assert response.status_code == 201, response.content
    polled = d_api.get(f"/api/v1/requests/{request_id}").json()
    assert polled["status"] == "approved"
    grant_d = Grant.objects.get(pk=polled["grant"]["id"])
    assert (grant_d.parent_id, grant_d.depth) == (grant_a.pk, 1)
    assert grant_d.expires_at <= grant_a.expires_at
    token_d = d_api.post(polled["grant"]["token_url"]).json()["access_token"]
    claims = jwt.decode(
        token_d, jwks_key(api, token_d), algorithms=["ES256"], audience="payments-db"
    )
    assert claims["sub"] == agent.spiffe_id
    assert claims["act"] == {"sub": foreign_d.spiffe_id}
    assert claims["authorization_details"][0]["approvers"] == ["other-sponsor"]


def test_a_pending_delegation_dies_with_its_parent(
    agent_api, foreign_d, other_sponsor, signer, privileges, django_capture_on_commit_callbacks
):
    token_a, grant_a = root_token(agent_api)
    request_id = exchange(agent_api, token_a, signer.act(foreign_d.spiffe_id)).json()["request_id"]
    with django_capture_on_commit_callbacks(execute=True):
        assert agent_api.post(f"/api/v1/grants/{grant_a.pk}/complete").status_code == 200
    access_request = AccessRequest.objects.get(pk=request_id)
    assert access_request.status == "cancelled"
    assert access_request.final_reason == "parent grant ended"
    assert decide(other_sponsor, request_id).status_code == 409
    assert not Grant.objects.filter(agent=foreign_d).exists()


def test_approving_a_delegation_whose_parent_ended_issues_nothing(
    agent_api, foreign_d, other_sponsor, signer, privileges
):
    token_a, grant_a = root_token(agent_api)
    request_id = exchange(agent_api, token_a, signer.act(foreign_d.spiffe_id)).json()["request_id"]
    # The parent ends; the clean-up of waiting requests has not run (it runs after commit).
    assert agent_api.post(f"/api/v1/grants/{grant_a.pk}/complete").status_code == 200
    error = error_of(decide(other_sponsor, request_id), status=409)
    assert error["code"] == "parent_grant_not_active"
    assert AccessRequest.objects.get(pk=request_id).status == "denied"
    assert not Grant.objects.filter(agent=foreign_d).exists()


# --- revocation cascades ---------------------------------------------------------------------


def test_revoking_the_root_ends_every_link_in_the_same_instant(
    chain, resource_server_api, privileges
):
    (_, a_api, token_a, grant_a), (_, _, token_b, grant_b), (_, _, token_c, grant_c) = (
        chain["a"],
        chain["b"],
        chain["c"],
    )
    assert introspect(resource_server_api, token_c)["active"] is True
    response = a_api.post(f"/api/v1/grants/{grant_a.pk}/complete")
    assert response.status_code == 200, response.content
    for grant in (grant_a, grant_b, grant_c):
        grant.refresh_from_db()
    assert (grant_a.revoke_reason, grant_b.revoke_reason, grant_c.revoke_reason) == (
        "completed",
        "cascade",
        "cascade",
    )
    assert grant_a.revoked_at == grant_b.revoked_at == grant_c.revoked_at
    for token in (token_a, token_b, token_c):
        assert introspect(resource_server_api, token) == {"active": False}
    events = AuditEvent.objects.filter(grant_id__in=[grant_b.pk, grant_c.pk], verb="grant.revoked")
    assert sorted(event.data["reason"] for event in events) == ["cascade", "cascade"]
    assert {event.data["cascade_from"] for event in events} == {grant_a.pk}
    # B can no longer refresh or act under its grant.
    b_api = chain["b"][1]
    assert b_api.post(f"/api/v1/grants/{grant_b.pk}/token").status_code == 409


def test_revoking_a_middle_link_leaves_the_root_alone(chain, resource_server_api, privileges):
    from approvals.services import grant_revoke

    grant_b = chain["b"][3]
    grant_revoke(grant=grant_b, actor=Actor.system("test"))
    assert introspect(resource_server_api, chain["a"][2])["active"] is True
    assert introspect(resource_server_api, chain["c"][2]) == {"active": False}
    assert Grant.objects.get(pk=chain["c"][3].pk).revoke_reason == "cascade"


def test_suspending_a_middle_agent_ends_its_grant_and_everything_delegated_from_it(
    chain, resource_server_api, privileges
):
    agent_suspend(agent=chain["b"][0], actor=Actor.system("test"))
    grant_b, grant_c = (Grant.objects.get(pk=chain[k][3].pk) for k in "bc")
    assert (grant_b.revoke_reason, grant_c.revoke_reason) == ("agent_suspended", "cascade")
    assert introspect(resource_server_api, chain["c"][2]) == {"active": False}
    assert introspect(resource_server_api, chain["a"][2])["active"] is True


# --- the chain explains itself -----------------------------------------------------------------


def test_explain_grant_names_every_agent_approver_and_tool_call(
    agent, agent_api, helper_b, foreign_d, sponsor, other_sponsor, signer, privileges
):
    # A's refund privilege needs a person; A hands it to B (same sponsor, automatic), and B on
    # to D (another sponsor, who approves it).
    request_id = submit(agent_api, "payments-api:refund", duration=1800).json()["id"]
    assert decide(sponsor, request_id, comment="refunds for the Acme dispute").status_code == 201
    token_url = agent_api.get(f"/api/v1/requests/{request_id}").json()["grant"]["token_url"]
    token_a = agent_api.post(token_url).json()["access_token"]
    response_b = exchange(
        agent_api, token_a, signer.act(helper_b.spiffe_id), scope="payments-api:refund"
    )
    assert response_b.status_code == 200, response_b.content
    b_api = client_for(signer, helper_b)
    response_d = exchange(b_api, response_b.json()["access_token"], signer.act(foreign_d.spiffe_id))
    assert response_d.status_code == 202, response_d.content
    assert decide(other_sponsor, response_d.json()["request_id"]).status_code == 201
    grant_a = Grant.objects.get(access_request_id=request_id)
    grant_b = Grant.objects.get(pk=response_b.json()["grant_id"])
    grant_d = Grant.objects.get(access_request_id=response_d.json()["request_id"])
    d_api = client_for(signer, foreign_d)
    for client, grant, tool in (
        (agent_api, grant_a, "refunds.list"),
        (b_api, grant_b, "refunds.prepare"),
        (d_api, grant_d, "refunds.issue"),
    ):
        response = client.post(
            f"/api/v1/grants/{grant.pk}/tool-calls",
            {"tool": tool, "target": "dispute-4411", "outcome": "success"},
            format="json",
        )
        assert response.status_code == 201, response.content

    out = io.StringIO()
    call_command("explain_grant", str(grant_d.pk), stdout=out)
    text = out.getvalue()
    assert "Human at the root: sponsor approved grant" in text
    positions = [text.index(a.spiffe_id) for a in (agent, helper_b, foreign_d)]
    assert positions == sorted(positions)  # root first
    assert "approved by sponsor via api" in text
    assert "refunds for the Acme dispute" in text
    assert "approved by policy at" in text
    assert "approved by other-sponsor via api" in text
    for tool in ("refunds.list", "refunds.prepare", "refunds.issue"):
        assert tool in text

    out = io.StringIO()
    call_command("explain_grant", str(grant_a.pk), "--json", stdout=out)
    explained = json.loads(out.getvalue())
    assert explained["accountable"] == "sponsor"
    assert [link["grant_id"] for link in explained["links"]] == [grant_a.pk]
    assert [link["grant_id"] for link in explained["onward"]] == [grant_b.pk, grant_d.pk]
    assert explained["onward"][1]["decisions"][0]["approver"] == "other-sponsor"
    assert [call["tool"] for call in explained["onward"][1]["tool_calls"]] == ["refunds.issue"]


def test_explain_grant_says_when_the_root_was_automatic(chain, privileges, sponsor):
    out = io.StringIO()
    call_command("explain_grant", str(chain["c"][3].pk), stdout=out)
    assert "Human at the root: sponsor, sponsor of Invoice bot" in out.getvalue()
    assert "tool calls: none" in out.getvalue()


def test_explain_grant_refuses_an_unknown_grant(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no grant #999999"):
        call_command("explain_grant", "999999")


# --- shipping the delegation defaults to an existing database -----------------------------------


def test_the_migration_moves_an_untouched_default_policy_to_the_new_text(privileges):
    migration = importlib.import_module("approvals.migrations.0005_delegation_policies")
    policy = Policy.objects.get(name="default")
    Policy.objects.filter(pk=policy.pk).update(text=migration.PREVIOUS_SHIPPED_TEXT)
    generation = PolicySetState.objects.get(id=1).generation

    migration.ship_delegation_defaults(django_apps, None)
    policy.refresh_from_db()
    assert policy.text == DEFAULT_POLICY_TEXT
    assert "delegation-within-sponsor-automatic" in policy.text
    assert PolicyRevision.objects.filter(policy=policy, version=policy.version).exists()
    assert PolicySetState.objects.get(id=1).generation == generation + 1
    assert AuditEvent.objects.filter(verb="policy.changed", actor_id="migration").exists()

    edited = "// edited by an admin\n" + migration.PREVIOUS_SHIPPED_TEXT
    Policy.objects.filter(pk=policy.pk).update(text=edited)
    migration.ship_delegation_defaults(django_apps, None)
    assert Policy.objects.get(pk=policy.pk).text == edited


def test_intent_can_come_as_a_json_object(agent_api, helper_b, signer, privileges):
    token_a, _ = root_token(agent_api)
    response = exchange(
        agent_api,
        token_a,
        signer.act(helper_b.spiffe_id),
        as_json=True,
        intent_action=None,
        intent_target=None,
        intent_justification=None,
        intent=intent(action="summarise"),
        task_id="task-1/sub",
    )
    assert response.status_code == 200, response.content
    access_request = AccessRequest.objects.get(agent=helper_b)
    assert access_request.intent["action"] == "summarise"
    assert access_request.task_id == "task-1/sub"
