"""The actor token of a delegation is never a login, and is accepted once (DESIGN invariant 10).

The attack this closes: the delegating agent held the sub-agent's login SVID (its actor token),
and could then act as the sub-agent: list its grants, mint tokens for a grant the sub-agent's
sponsor approved, file requests as it, and present the same actor token again."""

import threading
import time
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from agents.models import SpentActorToken
from approvals.models import AccessRequest, Grant
from audit.models import AuditEvent
from tests.approvals import test_delegation as delegation
from tests.approvals.conftest import decide, submit
from tests.approvals.test_delegation import client_for, error_of, exchange, root_token

# The personas of the delegation tests: one sponsor's agents A, B, C; another sponsor's agent D.
helper_b, helper_c = delegation.helper_b, delegation.helper_c
foreign_d, other_sponsor = delegation.foreign_d, delegation.other_sponsor

pytestmark = pytest.mark.django_db


def bearer(api, token):
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_an_actor_token_never_logs_in_as_the_sub_agent(
    agent_api, foreign_d, other_sponsor, signer, privileges, api
):
    # D's own sponsor approved D a refund grant: what the attacker wanted to reach.
    d_api = client_for(signer, foreign_d)
    request_id = submit(d_api, "payments-api:refund", duration=1800, task_id="d-task").json()["id"]
    assert decide(other_sponsor, request_id).status_code == 201
    d_grant = Grant.objects.get(access_request_id=request_id)

    token_a, _ = root_token(agent_api)
    actor_token = signer.act(foreign_d.spiffe_id)
    response = exchange(agent_api, token_a, actor_token)
    assert response.status_code == 202, response.content  # crosses sponsors: D's sponsor decides

    # A now holds D's actor token; every use of it as D's login is refused.
    for response in (
        api.get("/api/v1/grants", **bearer(api, actor_token)),
        api.get(f"/api/v1/grants/{d_grant.pk}", **bearer(api, actor_token)),
        api.post(f"/api/v1/grants/{d_grant.pk}/token", **bearer(api, actor_token)),
        api.post(
            "/api/v1/requests",
            {
                "privilege": "payments-db:read",
                "task_id": "as-d",
                "duration_seconds": 60,
                "intent": {"action": "a", "target": "b", "justification": "c"},
            },
            format="json",
            **bearer(api, actor_token),
        ),
    ):
        assert response.status_code == 401, response.content
        error = response.json()["error"]
        assert error["code"] == "wrong_audience"
        assert "delegation actor token" in error["message"]
    assert AccessRequest.objects.filter(agent=foreign_d).count() == 2  # its own and A's handoff
    rejected = AuditEvent.objects.filter(verb="auth.rejected", data__reason="wrong_audience")
    assert rejected.count() == 4


def test_a_login_svid_is_never_accepted_as_an_actor_token(
    agent_api, helper_b, signer, privileges, settings
):
    token_a, grant_a = root_token(agent_api)
    error = error_of(exchange(agent_api, token_a, signer.mint(helper_b.spiffe_id)))
    assert error["code"] == "invalid_request"
    assert list(error["fields"]) == ["actor_token"]
    assert settings.CUSTODY_DELEGATION_AUDIENCE in error["message"]
    assert not AccessRequest.objects.filter(agent=helper_b).exists()
    refused = AuditEvent.objects.get(verb="delegation.refused", grant_id=grant_a.pk)
    assert refused.data["code"] == "invalid_request"


def test_a_token_naming_both_audiences_is_neither_a_login_nor_an_actor_token(
    api, agent_api, helper_b, signer, privileges, settings
):
    both = [settings.CUSTODY_AUDIENCE, settings.CUSTODY_DELEGATION_AUDIENCE]
    token = signer.mint(helper_b.spiffe_id, audience=both, ttl=60)
    response = api.get("/api/v1/agents/me", **bearer(api, token))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "wrong_audience"
    token_a, _ = root_token(agent_api)
    error = error_of(exchange(agent_api, token_a, signer.mint(helper_b.spiffe_id, audience=both)))
    assert "never the same token" in error["message"]
    assert not AccessRequest.objects.filter(agent=helper_b).exists()


def test_an_actor_token_is_accepted_once(agent_api, helper_b, signer, privileges):
    token_a, grant_a = root_token(agent_api)
    actor_token = signer.act(helper_b.spiffe_id)
    assert exchange(agent_api, token_a, actor_token).status_code == 200
    error = error_of(exchange(agent_api, token_a, actor_token))
    assert error["code"] == "invalid_request"
    assert "already used" in error["message"]
    assert Grant.objects.filter(agent=helper_b).count() == 1
    refused = AuditEvent.objects.get(verb="delegation.refused", grant_id=grant_a.pk)
    assert "already used" in refused.data["message"]
    # A fresh actor token from the sub-agent is what a second delegation needs.
    assert exchange(agent_api, token_a, signer.act(helper_b.spiffe_id)).status_code == 200


def test_a_refused_exchange_still_spends_its_actor_token(agent_api, helper_b, signer, privileges):
    token_a, _ = root_token(agent_api)
    actor_token = signer.act(helper_b.spiffe_id)
    assert error_of(exchange(agent_api, token_a, actor_token, scope="payments-db:write"))
    error = error_of(exchange(agent_api, token_a, actor_token))
    assert "already used" in error["message"]


@pytest.mark.django_db(transaction=True)
def test_racing_replays_of_one_actor_token_delegate_once(
    agent, agent_api, helper_b, signer, privileges
):
    token_a, _ = root_token(agent_api)
    actor_token = signer.act(helper_b.spiffe_id)
    racers = 8
    barrier = threading.Barrier(racers)
    statuses: list[int] = []

    def race():
        try:
            client = client_for(signer, agent)
            barrier.wait()
            statuses.append(exchange(client, token_a, actor_token).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [400] * (racers - 1)
    assert Grant.objects.filter(agent=helper_b).count() == 1


def test_an_actor_token_living_longer_than_the_maximum_is_refused(
    agent_api, helper_b, signer, privileges, settings
):
    token_a, _ = root_token(agent_api)
    error = error_of(exchange(agent_api, token_a, signer.act(helper_b.spiffe_id, ttl=301)))
    assert error["code"] == "invalid_request"
    assert "at most 300 s for an actor token" in error["message"]
    # Backdating iat does not hide the lifetime: exp - iat is what counts.
    now = int(time.time())
    backdated = signer.act(helper_b.spiffe_id, iat=now - 280, exp=now + 20)
    response = exchange(agent_api, token_a, backdated)
    assert response.status_code == 200, response.content
    stretched = signer.act(helper_b.spiffe_id, iat=now - 600, exp=now + 20)
    assert "at most 300 s" in error_of(exchange(agent_api, token_a, stretched))["message"]
    # An actor token without jti cannot be remembered, so it is refused.
    error = error_of(exchange(agent_api, token_a, signer.act(helper_b.spiffe_id, jti=None)))
    assert "'jti'" in error["message"]
    settings.CUSTODY_DELEGATION_TOKEN_MAX_SECONDS = 600
    assert exchange(agent_api, token_a, signer.act(helper_b.spiffe_id, ttl=600)).status_code == 200


def test_spent_actor_tokens_are_forgotten_once_they_have_expired(
    agent, agent_api, helper_b, helper_c, signer, privileges
):
    token_a, _ = root_token(agent_api)
    assert exchange(agent_api, token_a, signer.act(helper_b.spiffe_id, ttl=60)).status_code == 200
    first = SpentActorToken.objects.get()
    # Remembered for the token's life plus the clock leeway it could still be accepted within.
    assert first.expires_at >= timezone.now() + timedelta(seconds=110)
    with time_machine.travel(timezone.now() + timedelta(seconds=200), tick=False):
        caller = client_for(signer, agent)
        response = exchange(caller, token_a, signer.act(helper_c.spiffe_id, ttl=60))
        assert response.status_code == 200, response.content
    assert list(SpentActorToken.objects.values_list("pk", flat=True)) != [first.pk]
    assert SpentActorToken.objects.count() == 1
