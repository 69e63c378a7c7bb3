"""Invariant 13 at the edges: an agent is registered with, and kept on, an active sponsor and a
team with an active member (the service, the admin add and change forms, reactivation); a
deleted sponsor orphans their agents (the ORM and the admin's delete page), in the deletion's
transaction, naming them; a team that operates agents is never deleted."""

import pytest
from django.contrib.auth.models import Group
from django.db.models import ProtectedError
from django.test import Client

from agents.lifecycle import agent_take_ownership
from agents.models import Agent
from agents.services import agent_change_team, agent_reactivate, agent_register, agent_suspend
from approvals.models import AccessRequest
from audit.models import AuditEvent
from audit.services import Actor, verify_chain
from core.errors import Conflict, InvalidInput
from tests.approvals.conftest import privileges, submit  # noqa: F401  (privileges: a fixture)
from tests.factories import AccessRequestFactory, AgentFactory, GroupFactory, UserFactory

pytestmark = pytest.mark.django_db

ADD = "/admin/agents/agent/add/"
ADMIN_ACTOR = Actor.system("test-admin")


@pytest.fixture
def admin_web(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def empty_team(db) -> Group:
    """A team whose only member can no longer sign in."""
    team = GroupFactory(name="night-shift")
    UserFactory(username="gone-operator", is_active=False).groups.add(team)
    return team


@pytest.fixture
def operator(db, team):
    user = UserFactory(username="operator")
    user.groups.add(team)
    return user


def verbs(agent) -> list[str]:
    return list(
        AuditEvent.objects.filter(agent_id=agent.pk)
        .order_by("sequence")
        .values_list("verb", flat=True)
    )


def event(agent, verb: str) -> AuditEvent:
    return AuditEvent.objects.get(agent_id=agent.pk, verb=verb)


# --- registered and kept on an active sponsor and a team with an active member -------------


def test_the_service_refuses_to_register_an_agent_on_a_team_nobody_can_run(
    trust_domain, sponsor, empty_team
):
    events = AuditEvent.objects.count()
    with pytest.raises(InvalidInput) as refused:
        agent_register(
            spiffe_id="spiffe://example.test/agents/night-bot",
            name="Night bot",
            sponsor=sponsor,
            team=empty_team,
            actor=ADMIN_ACTOR,
        )
    assert refused.value.code == "empty_team"
    assert refused.value.status_code == 400
    assert "night-shift has no active member" in refused.value.fields["team"][0]
    assert not Agent.objects.filter(name="Night bot").exists()
    assert AuditEvent.objects.count() == events  # nothing half-written


def test_the_admin_add_form_refuses_a_team_nobody_can_run(
    admin_web, trust_domain, sponsor, empty_team
):
    response = admin_web.post(
        ADD,
        {
            "spiffe_id": "spiffe://example.test/agents/night-bot",
            "name": "Night bot",
            "sponsor": sponsor.pk,
            "team": empty_team.pk,
            "max_delegation_depth": 3,
            "kind": "agent",
            "introspection_audiences": "[]",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "night-shift has no active member" in errors["team"][0]
    assert not Agent.objects.filter(name="Night bot").exists()


def test_the_service_refuses_to_move_an_agent_to_a_team_nobody_can_run_with_evidence(
    agent, team, empty_team, admin_user
):
    with pytest.raises(Conflict) as refused:
        agent_change_team(agent=agent, team=empty_team, actor=Actor.for_user(admin_user))
    assert refused.value.code == "empty_team" and refused.value.status_code == 409
    assert "Add someone to the team first" in refused.value.message
    agent.refresh_from_db()
    assert agent.team == team
    refusal = event(agent, "agent.ownership_refused")
    assert (refusal.actor_id, refusal.data) == (
        "admin",
        {"action": "team_change", "why": "empty_team", "team": "night-shift"},
    )
    assert "agent.team_changed" not in verbs(agent)


def test_the_admin_change_form_refuses_a_team_nobody_can_run_with_evidence(
    admin_web, agent, team, empty_team
):
    response = admin_web.post(
        f"/admin/agents/agent/{agent.pk}/change/",
        {
            "name": agent.name,
            "sponsor": agent.sponsor_id,
            "team": empty_team.pk,
            "max_delegation_depth": 3,
            "review_due": agent.review_due.isoformat(),
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "night-shift has no active member" in errors["team"][0]
    agent.refresh_from_db()
    assert agent.team == team
    assert verbs(agent) == ["agent.registered", "agent.ownership_refused"]
    assert event(agent, "agent.ownership_refused").actor_id == "admin"
    page = admin_web.get(f"/agents/{agent.pk}/").content.decode()
    assert "Refused: moving it to team night-shift, which has no active member" in page


def test_the_admin_change_form_moves_an_agent_to_a_team_with_someone_on_it(
    admin_web, agent, empty_team
):
    UserFactory(username="night-owl").groups.add(empty_team)
    response = admin_web.post(
        f"/admin/agents/agent/{agent.pk}/change/",
        {
            "name": agent.name,
            "sponsor": agent.sponsor_id,
            "team": empty_team.pk,
            "max_delegation_depth": 3,
            "review_due": agent.review_due.isoformat(),
        },
    )
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.team == empty_team
    assert verbs(agent)[-1] == "agent.team_changed"


def test_an_agent_on_a_team_left_empty_is_not_reactivated(agent, sponsor, team):
    agent_suspend(agent=agent, actor=ADMIN_ACTOR)
    # The team empties while the sponsor still signs in (they leave the team, not the company);
    # the orphan flag cleared by hand, so that only the team can stand in the way.
    team.user_set.remove(sponsor)
    Agent.objects.filter(pk=agent.pk).update(orphaned_at=None, orphan_reason="")
    with pytest.raises(Conflict, match="its team payments-platform has no active member"):
        agent_reactivate(agent=agent, actor=ADMIN_ACTOR)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.SUSPENDED


# --- a deleted sponsor orphans their agents --------------------------------------------------


def test_deleting_a_sponsor_orphans_their_agents_naming_them(
    agent,
    sponsor,
    operator,
    privileges,  # noqa: F811
):
    waiting = AccessRequestFactory(agent=agent, privilege_name="payments-api:refund")
    assert waiting.status == AccessRequest.Status.PENDING
    retired = AgentFactory(sponsor=sponsor, team=agent.team, status=Agent.Status.RETIRED)

    sponsor.delete()

    agent.refresh_from_db()
    assert agent.sponsor is None and agent.sponsor_name == "(sponsor deleted)"
    assert agent.orphan_reason == Agent.OrphanReason.SPONSOR_DELETED
    assert agent.status == Agent.Status.ACTIVE  # until the grace period ends
    trail = verbs(agent)
    assert (
        trail.index("agent.orphaned")
        < trail.index("request.escalated")
        < trail.index("agent.sponsor_deleted")
    )
    assert event(agent, "agent.orphaned").data["sponsor"] == "sponsor"
    assert event(agent, "agent.sponsor_deleted").data["former_sponsor"] == "sponsor"
    waiting.refresh_from_db()
    assert waiting.escalated_at is not None  # its backups and team decide now
    retired.refresh_from_db()
    assert retired.sponsor is None and retired.orphaned_at is None
    assert event(retired, "agent.sponsor_deleted").data["status"] == "retired"
    assert verify_chain().ok


def test_a_sponsor_deactivated_then_deleted_keeps_the_grace_period_with_a_truer_reason(
    agent, sponsor
):
    sponsor.is_active = False
    sponsor.save()
    agent.refresh_from_db()
    orphaned_at = agent.orphaned_at
    assert agent.orphan_reason == Agent.OrphanReason.SPONSOR_INACTIVE

    sponsor.delete()

    agent.refresh_from_db()
    assert agent.orphaned_at == orphaned_at
    assert agent.orphan_reason == Agent.OrphanReason.SPONSOR_DELETED
    assert verbs(agent).count("agent.orphaned") == 1
    assert "agent.sponsor_deleted" in verbs(agent)


def test_deleting_a_sponsor_in_admin_orphans_their_agents_as_the_admin(
    admin_web, agent, sponsor, operator
):
    page = admin_web.get(f"/admin/auth/user/{sponsor.pk}/delete/")
    assert page.status_code == 200 and "protected" not in page.content.decode().lower()
    response = admin_web.post(f"/admin/auth/user/{sponsor.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.sponsor is None and agent.is_orphaned
    for verb in ("agent.orphaned", "agent.sponsor_deleted"):
        assert (event(agent, verb).actor_type, event(agent, verb).actor_id) == ("user", "admin")


def test_an_agent_whose_sponsor_was_deleted_keeps_working_until_someone_owns_it(
    agent,
    sponsor,
    operator,
    admin_user,
    agent_api,
    privileges,  # noqa: F811
):
    sponsor.delete()
    me = agent_api.get("/api/v1/agents/me")
    assert me.status_code == 200 and me.json()["sponsor"] is None
    submitted = submit(agent_api, "payments-api:refund", task_id="after-the-sponsor-left")
    assert submitted.status_code == 201, submitted.content
    staff = Client()
    staff.force_login(admin_user)
    for url in (f"/agents/{agent.pk}/", "/agents/", "/", f"/requests/{submitted.json()['id']}/"):
        page = staff.get(url)
        assert page.status_code == 200, url
    page = staff.get(f"/agents/{agent.pk}/").content.decode()
    assert "(sponsor deleted)" in page and "Sponsor sponsor was deleted" in page

    agent_suspend(agent=agent, actor=ADMIN_ACTOR)
    with pytest.raises(Conflict, match="its sponsor was deleted"):
        agent_reactivate(agent=agent, actor=ADMIN_ACTOR)

    agent_take_ownership(agent=agent, person=operator)
    agent.refresh_from_db()
    assert agent.sponsor == operator and not agent.is_orphaned
    taken = event(agent, "agent.sponsor_reassigned").data
    assert (taken["from"], taken["to"]) == ("(sponsor deleted)", "operator")
    agent_reactivate(agent=agent, actor=ADMIN_ACTOR)


def test_a_person_whose_decisions_are_evidence_is_not_deleted_and_nothing_changes(
    agent,
    sponsor,
    privileges,  # noqa: F811
):
    from tests.frontend.conftest import approve

    approve(sponsor, AccessRequestFactory(agent=agent, privilege_name="payments-api:refund"))
    events = AuditEvent.objects.count()
    with pytest.raises(ProtectedError):
        sponsor.delete()
    agent.refresh_from_db()
    assert agent.sponsor == sponsor and not agent.is_orphaned
    assert AuditEvent.objects.count() == events


def test_a_team_that_operates_agents_is_not_deleted(admin_web, agent, team):
    page = admin_web.get(f"/admin/auth/group/{team.pk}/delete/").content.decode()
    assert "Cannot delete group" in page and "<li>agent</li>" in page  # agents stand in the way
    admin_web.post(f"/admin/auth/group/{team.pk}/delete/", {"post": "yes"})
    assert Group.objects.filter(pk=team.pk).exists()
    with pytest.raises(ProtectedError):
        team.delete()
    agent.refresh_from_db()
    assert agent.team == team and not agent.is_orphaned
