"""Agent services: registration, ownership and lifecycle, each with its object permissions and
its audit event."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from guardian.shortcuts import get_perms, get_user_perms

from agents.models import Agent
from agents.services import (
    agent_reactivate,
    agent_reassign_sponsor,
    agent_register,
    agent_retire,
    agent_suspend,
)
from agents.spiffe import parse_spiffe_id
from audit.models import AuditEvent
from audit.services import Actor, verify_chain
from core.errors import Conflict, InvalidInput
from tests.factories import AgentFactory, TrustDomainFactory, UserFactory

pytestmark = pytest.mark.django_db

SPONSOR_PERMS = {"view_agent", "approve_for_agent", "manage_agent"}


def fresh(user):
    """Permission checks cache per user object; ask a freshly loaded one."""
    return get_user_model().objects.get(pk=user.pk)


def agent_verbs(agent: Agent) -> list[str]:
    return list(
        AuditEvent.objects.filter(agent_id=agent.pk)
        .order_by("sequence")
        .values_list("verb", flat=True)
    )


@pytest.fixture
def admin_actor(admin_user):
    return Actor.for_user(admin_user)


@pytest.fixture
def team_member(db, team):
    user = UserFactory(username="operator")
    user.groups.add(team)
    return user


@pytest.fixture(autouse=True)
def example_trust_domain(db):
    return TrustDomainFactory(name="example.test")


@pytest.fixture
def registered(sponsor, team, admin_actor):
    return agent_register(
        spiffe_id="spiffe://example.test/agents/ledger-bot",
        name="Ledger bot",
        sponsor=sponsor,
        team=team,
        actor=admin_actor,
    )


def test_it_gives_the_sponsor_and_the_team_their_permissions_on_registration(
    registered, sponsor, team, team_member, outsider
):
    assert set(get_user_perms(sponsor, registered)) == SPONSOR_PERMS
    assert get_perms(team, registered) == ["view_agent"]
    operator = fresh(team_member)
    assert operator.has_perm("agents.view_agent", registered)
    assert not operator.has_perm("agents.approve_for_agent", registered)
    assert not operator.has_perm("agents.manage_agent", registered)
    assert fresh(sponsor).has_perm("agents.approve_for_agent", registered)
    assert get_perms(fresh(outsider), registered) == []


def test_it_audits_the_registration(registered, admin_user):
    event = AuditEvent.objects.get(agent_id=registered.pk)
    assert event.verb == "agent.registered"
    assert (event.actor_type, event.actor_id) == ("user", admin_user.username)
    assert event.data == {
        "spiffe_id": "spiffe://example.test/agents/ledger-bot",
        "name": "Ledger bot",
        "sponsor": "sponsor",
        "team": "payments-platform",
        "max_delegation_depth": 3,
        "oidc_subject": "",
        "kind": "agent",
        "introspection_audiences": [],
    }
    assert registered.status == Agent.Status.ACTIVE
    assert registered.review_due is not None
    assert verify_chain().ok


def test_it_moves_the_sponsor_permissions_on_reassignment(registered, sponsor, admin_actor):
    successor = UserFactory(username="successor")
    agent = agent_reassign_sponsor(agent=registered, sponsor=successor, actor=admin_actor)
    assert agent.sponsor == successor
    assert Agent.objects.get(pk=agent.pk).sponsor == successor
    assert list(get_user_perms(sponsor, agent)) == []
    former = fresh(sponsor)
    assert not former.has_perm("agents.approve_for_agent", agent)
    assert not former.has_perm("agents.manage_agent", agent)
    assert former.has_perm("agents.view_agent", agent)  # still on the operating team
    assert set(get_user_perms(successor, agent)) == SPONSOR_PERMS
    assert fresh(successor).has_perm("agents.approve_for_agent", agent)
    event = AuditEvent.objects.filter(agent_id=agent.pk).latest("sequence")
    assert event.verb == "agent.sponsor_reassigned"
    assert event.data == {
        "from": "sponsor",
        "to": "successor",
        "approve_for_agent": {"granted_to": ["successor"], "revoked_from": ["sponsor"]},
    }


def test_it_leaves_a_former_sponsor_outside_the_team_with_nothing(team, admin_actor, outsider):
    UserFactory(username="operator").groups.add(team)
    agent = agent_register(
        spiffe_id="spiffe://example.test/agents/lonely-bot",
        name="Lonely bot",
        sponsor=outsider,
        team=team,
        actor=admin_actor,
    )
    assert fresh(outsider).has_perm("agents.view_agent", agent)
    agent_reassign_sponsor(agent=agent, sponsor=UserFactory(), actor=admin_actor)
    assert get_perms(fresh(outsider), agent) == []
    assert not fresh(outsider).has_perm("agents.view_agent", agent)


def test_it_keeps_the_team_view_through_a_sponsor_reassignment(registered, team, admin_actor):
    agent_reassign_sponsor(agent=registered, sponsor=UserFactory(), actor=admin_actor)
    assert get_perms(team, registered) == ["view_agent"]


def test_it_writes_nothing_when_reassigning_to_the_same_sponsor(registered, sponsor, admin_actor):
    agent_reassign_sponsor(agent=registered, sponsor=sponsor, actor=admin_actor)
    assert agent_verbs(registered) == ["agent.registered"]
    assert set(get_perms(fresh(sponsor), registered)) == SPONSOR_PERMS


def test_it_suspends_reactivates_and_retires_with_an_event_each(registered, admin_actor):
    agent = agent_suspend(agent=registered, actor=admin_actor, reason="leaked credentials")
    assert agent.status == Agent.Status.SUSPENDED
    agent = agent_reactivate(agent=agent, actor=admin_actor, reason="rotated")
    assert agent.status == Agent.Status.ACTIVE
    agent = agent_retire(agent=agent, actor=admin_actor, reason="replaced")
    assert Agent.objects.get(pk=agent.pk).status == Agent.Status.RETIRED
    assert agent_verbs(agent) == [
        "agent.registered",
        "agent.suspended",
        "agent.reactivated",
        "agent.retired",
    ]
    suspended = AuditEvent.objects.get(agent_id=agent.pk, verb="agent.suspended")
    assert suspended.data == {"from": "active", "to": "suspended", "reason": "leaked credentials"}
    assert verify_chain().ok


def test_it_retires_a_suspended_agent(registered, admin_actor):
    agent = agent_suspend(agent=registered, actor=admin_actor)
    agent = agent_retire(agent=agent, actor=admin_actor)
    assert agent.status == Agent.Status.RETIRED


@pytest.mark.parametrize("service", [agent_reactivate, agent_suspend])
def test_it_keeps_a_retired_agent_retired(registered, admin_actor, service):
    agent = agent_retire(agent=registered, actor=admin_actor)
    with pytest.raises(Conflict) as refused:
        service(agent=agent, actor=admin_actor)
    assert refused.value.code == "invalid_transition"
    assert "retired" in refused.value.message
    assert Agent.objects.get(pk=agent.pk).status == Agent.Status.RETIRED
    assert agent_verbs(agent) == ["agent.registered", "agent.retired"]


def test_it_suspends_only_once(registered, admin_actor):
    agent_suspend(agent=registered, actor=admin_actor)
    agent = agent_suspend(agent=registered, actor=admin_actor)
    assert agent.status == Agent.Status.SUSPENDED
    assert agent_verbs(agent) == ["agent.registered", "agent.suspended"]


def test_it_decides_a_transition_on_the_current_row_not_a_stale_copy(registered, admin_actor):
    stale = Agent.objects.get(pk=registered.pk)
    agent_suspend(agent=registered, actor=admin_actor)
    agent_retire(agent=registered, actor=admin_actor)
    # The service re-reads the row under lock: the stale copy cannot bring the agent back.
    with pytest.raises(Conflict):
        agent_reactivate(agent=stale, actor=admin_actor)


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://Example.test/agents/bot",  # upper-case trust domain
        "spiffe://example.test:8443/agents/bot",  # port
        "spiffe://svc@example.test/agents/bot",  # userinfo
        "spiffe://example.test/agents/bot?env=prod",  # query
        "spiffe://example.test/agents/bot#main",  # fragment
        "spiffe://example.test",  # no path
        "spiffe://example.test/",  # empty path
        "spiffe://example.test/agents//bot",  # empty segment
        "spiffe://example.test/agents/bot/",  # trailing slash
        "spiffe://example.test/agents/../admin",  # dot-dot segment
        "spiffe://example.test/agents/./bot",  # dot segment
        "spiffe://example.test/agents/b%6Ft",  # percent-encoding
        "spiffe:///agents/bot",  # no trust domain
        "https://example.test/agents/bot",  # another scheme
        "SPIFFE://example.test/agents/bot",  # upper-case scheme
        "example.test/agents/bot",  # no scheme at all
    ],
)
def test_it_refuses_an_invalid_spiffe_id(spiffe_id, sponsor, team, admin_actor):
    events_before = AuditEvent.objects.count()
    with pytest.raises(ValidationError) as refused:
        agent_register(
            spiffe_id=spiffe_id, name="Bad", sponsor=sponsor, team=team, actor=admin_actor
        )
    assert "spiffe_id" in refused.value.message_dict
    assert not Agent.objects.exists()
    assert AuditEvent.objects.count() == events_before


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://example.test/agents/invoice-bot",
        "spiffe://prod.example-corp.io/ns/payments/sa/Invoice_Bot.v2",
        "spiffe://td_1/x",
    ],
)
def test_it_accepts_a_valid_spiffe_id(spiffe_id, sponsor, team, admin_actor):
    TrustDomainFactory(name=parse_spiffe_id(spiffe_id).trust_domain)
    agent = agent_register(
        spiffe_id=spiffe_id, name="Good", sponsor=sponsor, team=team, actor=admin_actor
    )
    assert Agent.objects.get(pk=agent.pk).spiffe_id == spiffe_id


def test_it_refuses_a_second_agent_with_the_same_spiffe_id(registered, sponsor, team, admin_actor):
    with pytest.raises(ValidationError) as refused:
        agent_register(
            spiffe_id=registered.spiffe_id,
            name="Impostor",
            sponsor=sponsor,
            team=team,
            actor=admin_actor,
        )
    assert "spiffe_id" in refused.value.message_dict
    assert Agent.objects.count() == 1


def test_it_validates_through_full_clean_as_well(sponsor, team):
    agent = AgentFactory.build(
        spiffe_id="spiffe://example.test:1/agents/x", sponsor=sponsor, team=team
    )
    with pytest.raises(ValidationError, match="port"):
        agent.full_clean()


def test_it_keeps_the_delegation_depth_and_oidc_binding_given_at_registration(
    sponsor, team, admin_actor
):
    from tests.factories import TrustDomainFactory

    issuer = TrustDomainFactory(
        name="ci", kind="oidc", issuer="https://token.ci.example", jwks={"keys": []}
    )
    agent = agent_register(
        spiffe_id="spiffe://example.test/agents/ci-bot",
        name="CI bot",
        sponsor=sponsor,
        team=team,
        actor=admin_actor,
        max_delegation_depth=1,
        oidc_trust_domain=issuer,
        oidc_subject="repo:acme/payments",
    )
    agent.refresh_from_db()
    assert (agent.max_delegation_depth, agent.oidc_subject) == (1, "repo:acme/payments")
    assert agent.oidc_trust_domain == issuer


@pytest.mark.parametrize("who", ["inactive", "anonymous"])
def test_it_refuses_to_register_an_agent_whose_sponsor_cannot_sign_in(team, admin_actor, who):
    sponsor = UserFactory(username="gone", is_active=False) if who == "inactive" else None
    sponsor = sponsor or AnonymousUser()
    events_before = AuditEvent.objects.count()
    with pytest.raises(InvalidInput) as refused:
        agent_register(
            spiffe_id="spiffe://example.test/agents/orphan-bot",
            name="Orphan bot",
            sponsor=sponsor,
            team=team,
            actor=admin_actor,
        )
    assert refused.value.code == "inactive_sponsor"
    assert ("gone is inactive" if who == "inactive" else "anonymous") in refused.value.message
    assert not Agent.objects.exists()
    assert AuditEvent.objects.count() == events_before


def test_it_refuses_to_reassign_an_agent_to_an_inactive_sponsor(registered, sponsor, admin_actor):
    gone = UserFactory(username="gone", is_active=False)
    with pytest.raises(Conflict, match="gone is inactive") as refused:
        agent_reassign_sponsor(agent=registered, sponsor=gone, actor=admin_actor)
    assert refused.value.code == "inactive_sponsor"
    registered.refresh_from_db()
    assert registered.sponsor == sponsor
    assert get_user_perms(gone, registered).count() == 0
    assert agent_verbs(registered) == ["agent.registered", "agent.ownership_refused"]
    refusal = AuditEvent.objects.get(agent_id=registered.pk, verb="agent.ownership_refused")
    assert refusal.data == {
        "action": "sponsor_reassign",
        "why": "inactive_sponsor",
        "sponsor": "gone",
    }


def test_it_refuses_an_agent_of_an_unregistered_trust_domain(sponsor, team, admin_actor):
    with pytest.raises(InvalidInput, match="trust domain unknown.example is not registered") as e:
        agent_register(
            spiffe_id="spiffe://unknown.example/agents/bot",
            name="Stray bot",
            sponsor=sponsor,
            team=team,
            actor=admin_actor,
        )
    assert e.value.code == "unknown_trust_domain" and "spiffe_id" in e.value.fields
    assert not Agent.objects.exists()


def test_it_refuses_an_agent_of_a_disabled_trust_domain(sponsor, team, admin_actor):
    TrustDomainFactory(name="old.example", enabled=False)
    with pytest.raises(InvalidInput, match="trust domain old.example is disabled"):
        agent_register(
            spiffe_id="spiffe://old.example/agents/bot",
            name="Old bot",
            sponsor=sponsor,
            team=team,
            actor=admin_actor,
        )
    assert not Agent.objects.exists()


def test_an_oidc_agent_is_vouched_for_by_its_enabled_issuer(sponsor, team, admin_actor):
    issuer = TrustDomainFactory(
        name="gh", kind="oidc", issuer="https://token.gh.example", jwks={"keys": []}
    )
    agent = agent_register(
        spiffe_id="spiffe://ci.unregistered.example/agents/deploy",
        name="Deploy bot",
        sponsor=sponsor,
        team=team,
        actor=admin_actor,
        oidc_trust_domain=issuer,
        oidc_subject="repo:acme/deploy",
    )
    assert agent.oidc_trust_domain == issuer
    issuer.enabled = False
    issuer.save()
    with pytest.raises(InvalidInput, match="trust domain gh is disabled"):
        agent_register(
            spiffe_id="spiffe://ci.unregistered.example/agents/other",
            name="Other bot",
            sponsor=sponsor,
            team=team,
            actor=admin_actor,
            oidc_trust_domain=issuer,
            oidc_subject="repo:acme/other",
        )
