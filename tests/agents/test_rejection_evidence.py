"""A rejected agent login names the agent when the token proves who it is (its signature
verified), and only then: a forged token's claimed `sub` stays a claim."""

import time

import pytest
from django.test import Client

from agents.services import agent_suspend
from audit.models import AuditEvent
from audit.services import Actor
from tests.identity import SigningIdentity

ME = "/api/v1/agents/me"
pytestmark = pytest.mark.django_db


def get_me(api, token):
    return api.get(ME, HTTP_AUTHORIZATION=f"Bearer {token}")


def rejection(reason: str) -> AuditEvent:
    return AuditEvent.objects.get(verb="auth.rejected", data__reason=reason)


def test_a_suspended_agents_login_is_evidence_about_that_agent(api, agent, signer, sponsor):
    agent_suspend(agent=agent, actor=Actor.system("test"), reason="kill switch drill")

    assert get_me(api, signer.mint(agent.spiffe_id)).status_code == 401

    event = rejection("agent_suspended")
    assert (event.actor_type, event.actor_id) == ("agent", agent.spiffe_id)
    assert event.agent_id == agent.pk
    assert event.data["address"] == "127.0.0.1"
    # Its sponsor, who sees only evidence about their agents, finds it on the audit page.
    client = Client()
    client.force_login(sponsor)
    html = client.get("/audit/?verb=auth.rejected").content.decode()
    assert f'<tr id="event-{event.sequence}">' in html
    assert f'<a href="/agents/{agent.pk}/">{agent.name}</a> <small>(agent)</small>' in html


def test_a_wrong_audience_or_expired_token_names_the_agent(api, agent, signer):
    get_me(api, signer.mint(agent.spiffe_id, audience="someone-else"))
    now = int(time.time())
    get_me(api, signer.mint(agent.spiffe_id, iat=now - 600, exp=now - 120))

    for reason in ("wrong_audience", "token_expired"):
        event = rejection(reason)
        assert event.agent_id == agent.pk and event.actor_id == agent.spiffe_id


def test_a_forged_token_does_not_name_the_agent_it_claims(api, agent):
    forged = SigningIdentity("ES256").mint(agent.spiffe_id)  # a key the domain never published

    assert get_me(api, forged).status_code == 401

    event = rejection("unknown_key")
    assert event.agent_id is None
    assert event.actor_id == "unauthenticated:127.0.0.1"
