"""An agent's whole life is owned (invariant 13): ownership history, orphans, dormancy and
retirement, through the admin, the web UI, the agent API, the management command and the Celery
task, with the clock moved by time-machine."""

from datetime import timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from agents.models import Agent
from agents.services import agent_register, agent_retire
from agents.tasks import sweep_agent_lifecycle
from approvals.models import AccessRequest, Grant
from audit.models import AuditEvent
from audit.services import Actor, verify_chain
from tests.approvals.conftest import privileges, submit  # noqa: F401  (a fixture)
from tests.factories import AgentFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(db, team):
    """A member of the agent's team (not its sponsor)."""
    user = UserFactory(username="operator")
    user.groups.add(team)
    return user


def web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def verbs(agent) -> list[str]:
    return list(
        AuditEvent.objects.filter(agent_id=agent.pk)
        .order_by("sequence")
        .values_list("verb", flat=True)
    )


def deactivate(user):
    """What SSO deprovisioning or a script does: the person can no longer sign in."""
    user.is_active = False
    user.save()


def sweep_now() -> str:
    out = []

    class Sink:
        def write(self, text):
            out.append(text)

        def flush(self):
            pass

    call_command("sweep_lifecycle", stdout=Sink())
    return "".join(out)


def as_agent(agent, signer) -> APIClient:
    """The agent's API client with an SVID minted at the (travelled) current time."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
    return client


# --- ownership history -------------------------------------------------------------------------


def test_it_shows_every_ownership_change_on_the_agent_page_newest_first(
    agent, sponsor, operator, admin_user, backup_approver
):
    from agents.services import agent_change_team, agent_reassign_sponsor
    from tests.factories import GroupFactory

    other_team = GroupFactory(name="risk-platform")
    UserFactory(username="risk-operator").groups.add(other_team)
    agent_change_team(agent=agent, team=other_team, actor=Actor.for_user(admin_user))
    agent_reassign_sponsor(agent=agent, sponsor=operator, actor=Actor.for_user(admin_user))

    html = web(admin_user).get(f"/agents/{agent.pk}/").content.decode()
    history = html[html.index('id="ownership-history"') :]
    sponsor_row = history.index("Sponsor changed from sponsor to operator")
    team_row = history.index("Team changed from payments-platform to risk-platform")
    backup_row = history.index("backup became a backup approver")
    registered_row = history.index("Registered with sponsor sponsor and team payments-platform")
    assert sponsor_row < team_row < backup_row < registered_row
    assert "admin" in history[sponsor_row : sponsor_row + 400]  # who did it, by name


# --- orphans -----------------------------------------------------------------------------------


def test_a_sponsor_deactivated_in_admin_orphans_their_agents_at_once(
    agent,
    agent_api,
    sponsor,
    admin_user,
    privileges,  # noqa: F811
):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    response = web(admin_user).post(
        f"/admin/auth/user/{sponsor.pk}/change/",
        {
            "username": "sponsor",
            "email": sponsor.email,
            "groups": [group.pk for group in sponsor.groups.all()],
            "date_joined_0": "2026-11-01",
            "date_joined_1": "09:00:00",
        },  # "is_active" unticked
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    agent.refresh_from_db()
    assert agent.orphaned_at is not None
    assert agent.orphan_reason == Agent.OrphanReason.SPONSOR_INACTIVE
    orphaned = AuditEvent.objects.get(agent_id=agent.pk, verb="agent.orphaned")
    assert orphaned.actor_id == "admin"
    assert orphaned.data["sponsor"] == "sponsor"
    # Its pending request goes to the backups and the team now, not at its escalation point.
    escalated = AuditEvent.objects.get(access_request_id=request_id, verb="request.escalated")
    assert escalated.data["why"] == "agent_orphaned"
    assert AccessRequest.objects.get(pk=request_id).escalated_at is not None
    assert verify_chain().ok


def test_the_dashboard_lists_orphans_and_the_agent_page_says_when_it_is_suspended(
    agent, sponsor, operator, admin_user
):
    deactivate(sponsor)
    dashboard = web(admin_user).get("/").content.decode()
    orphans = dashboard[dashboard.index('id="orphans"') :]
    assert "Invoice bot" in orphans[: orphans.index("</ul>")]
    page = web(operator).get(f"/agents/{agent.pk}/").content.decode()
    assert 'id="orphan-notice"' in page
    assert "Its sponsor can no longer sign in" in page
    assert 'id="take-ownership"' in page  # a team member is offered the take-over


def test_a_team_member_takes_ownership_of_an_orphan_in_the_web_ui(
    agent, sponsor, operator, admin_user
):
    deactivate(sponsor)
    response = web(operator).post(f"/agents/{agent.pk}/take-ownership/", follow=True)
    assert "You now sponsor Invoice bot" in response.content.decode()
    agent.refresh_from_db()
    assert agent.sponsor == operator
    assert agent.orphaned_at is None
    assert verbs(agent)[-3:] == [
        "agent.orphaned",
        "agent.sponsor_reassigned",
        "agent.orphan_cleared",
    ]
    taken = AuditEvent.objects.get(agent_id=agent.pk, verb="agent.sponsor_reassigned")
    assert taken.actor_id == "operator"
    assert taken.data["took_ownership"] is True
    assert taken.data["approve_for_agent"]["granted_to"] == ["operator"]
    page = web(operator).get(f"/agents/{agent.pk}/").content.decode()
    assert "operator took ownership (sponsor was sponsor)" in page
    assert 'id="orphan-notice"' not in page


def test_only_an_orphan_is_taken_over_and_only_by_its_team(agent, sponsor, operator, outsider):
    # Not an orphan: the take-over is refused with a sentence, nothing changes.
    response = web(operator).post(f"/agents/{agent.pk}/take-ownership/", follow=True)
    assert "Only an orphaned agent is taken over by its team" in response.content.decode()
    deactivate(sponsor)
    # Someone outside the team cannot even see the agent.
    assert web(outsider).post(f"/agents/{agent.pk}/take-ownership/").status_code == 404
    agent.refresh_from_db()
    assert agent.sponsor == sponsor and agent.orphaned_at is not None
    assert "agent.sponsor_reassigned" not in verbs(agent)


def test_an_orphan_nobody_takes_over_is_suspended_after_the_grace_period(agent, sponsor, settings):
    settings.CUSTODY_ORPHAN_GRACE_DAYS = 7
    deactivate(sponsor)
    orphaned_at = Agent.objects.get(pk=agent.pk).orphaned_at
    with time_machine.travel(orphaned_at + timedelta(days=7, seconds=-60), tick=False):
        assert sweep_now().startswith("0 orphan(s) suspended")
        assert Agent.objects.get(pk=agent.pk).status == Agent.Status.ACTIVE
    with time_machine.travel(orphaned_at + timedelta(days=7, seconds=60), tick=False):
        assert sweep_now().startswith("1 orphan(s) suspended")
        assert sweep_now().startswith("0 orphan(s) suspended")  # idempotent
    agent.refresh_from_db()
    assert agent.status == Agent.Status.SUSPENDED
    suspended = AuditEvent.objects.get(agent_id=agent.pk, verb="agent.suspended")
    assert suspended.actor_id == "lifecycle"
    assert suspended.data["reason"].startswith("orphaned")


def test_an_orphan_cannot_be_reactivated_until_someone_owns_it(
    agent, sponsor, operator, admin_user
):
    deactivate(sponsor)
    with time_machine.travel(timezone.now() + timedelta(days=8), tick=False):
        sweep_now()
    assert Agent.objects.get(pk=agent.pk).status == Agent.Status.SUSPENDED
    response = web(admin_user).post(f"/agents/{agent.pk}/reactivate/", follow=True)
    assert "cannot be active: its sponsor sponsor can no longer sign in" in (
        response.content.decode()
    )
    assert Agent.objects.get(pk=agent.pk).status == Agent.Status.SUSPENDED
    web(operator).post(f"/agents/{agent.pk}/take-ownership/")
    web(admin_user).post(f"/agents/{agent.pk}/reactivate/")
    assert Agent.objects.get(pk=agent.pk).status == Agent.Status.ACTIVE


def test_a_team_emptied_of_its_last_member_orphans_its_agents(db, trust_domain, team):
    from tests.factories import GroupFactory

    sponsor = UserFactory(username="elsewhere")
    sponsor.groups.add(GroupFactory(name="other"))
    last_member = UserFactory(username="last")
    last_member.groups.add(team)
    agent = AgentFactory(sponsor=sponsor, team=team)
    other = UserFactory(username="second")
    other.groups.add(team)
    team.user_set.remove(other)
    assert Agent.objects.get(pk=agent.pk).orphaned_at is None  # one member is left
    last_member.groups.remove(team)
    agent.refresh_from_db()
    assert agent.orphan_reason == Agent.OrphanReason.TEAM_EMPTY
    assert AuditEvent.objects.get(agent_id=agent.pk, verb="agent.orphaned").data["team"] == (
        "payments-platform"
    )


def test_a_sponsor_signing_in_again_owns_their_agents_again(agent, sponsor):
    deactivate(sponsor)
    sponsor.is_active = True
    sponsor.save()
    agent.refresh_from_db()
    assert agent.orphaned_at is None
    cleared = AuditEvent.objects.get(agent_id=agent.pk, verb="agent.orphan_cleared")
    assert cleared.data["how"] == "sponsor_reactivated"


# --- dormancy ----------------------------------------------------------------------------------


def test_a_quiet_agent_is_flagged_dormant_cleared_by_signing_in_and_suspended_later(
    agent, signer, sponsor, settings
):
    settings.CUSTODY_DORMANT_AFTER_DAYS = 30
    settings.CUSTODY_DORMANT_SUSPEND_AFTER_DAYS = 90
    start = timezone.now()
    assert as_agent(agent, signer).get("/api/v1/agents/me").status_code == 200
    with time_machine.travel(start + timedelta(days=29), tick=False):
        assert sweep_agent_lifecycle.apply().get()["dormant_flagged"] == 0
    with time_machine.travel(start + timedelta(days=31), tick=False):
        assert sweep_agent_lifecycle.apply().get()["dormant_flagged"] == 1
        assert sweep_agent_lifecycle.apply().get()["dormant_flagged"] == 0
        assert Agent.objects.get(pk=agent.pk).dormant_at is not None
        page = web(sponsor).get(f"/agents/{agent.pk}/").content.decode()
        assert 'id="dormant-flag"' in page
        dashboard = web(sponsor).get("/").content.decode()
        assert "Invoice bot" in dashboard[dashboard.index('id="dormant"') :]
        # It authenticates again: the flag goes, with evidence.
        assert as_agent(agent, signer).get("/api/v1/agents/me").status_code == 200
        assert Agent.objects.get(pk=agent.pk).dormant_at is None
    with time_machine.travel(start + timedelta(days=31 + 31), tick=False):
        assert sweep_agent_lifecycle.apply().get()["dormant_flagged"] == 1
    with time_machine.travel(start + timedelta(days=31 + 89), tick=False):
        assert sweep_agent_lifecycle.apply().get()["dormant_suspended"] == 0
    with time_machine.travel(start + timedelta(days=31 + 91), tick=False):
        assert sweep_agent_lifecycle.apply().get()["dormant_suspended"] == 1
        assert sweep_agent_lifecycle.apply().get()["dormant_suspended"] == 0
    assert Agent.objects.get(pk=agent.pk).status == Agent.Status.SUSPENDED
    assert [v for v in verbs(agent) if v != "agent.registered"] == [
        "agent.dormant",
        "agent.dormancy_cleared",
        "agent.dormant",
        "agent.suspended",
    ]
    suspended = AuditEvent.objects.get(agent_id=agent.pk, verb="agent.suspended")
    assert suspended.data["reason"].startswith("dormant")
    assert verify_chain().ok


# --- retirement --------------------------------------------------------------------------------


def test_retiring_ends_grants_cancels_requests_and_keeps_history(
    agent,
    agent_api,
    sponsor,
    privileges,  # noqa: F811
):
    pending_id = submit(agent_api, "payments-api:refund", task_id="t-pending").json()["id"]
    granted = submit(agent_api, "payments-db:read", task_id="t-granted").json()
    assert granted["status"] == "approved"
    agent_retire(agent=agent, actor=Actor.system("test"), reason="replaced")
    assert AccessRequest.objects.get(pk=pending_id).status == AccessRequest.Status.CANCELLED
    assert not Grant.objects.live(timezone.now()).filter(agent=agent).exists()
    assert AuditEvent.objects.filter(agent_id=agent.pk, verb="request.created").count() == 2


def test_a_retired_spiffe_id_registered_again_is_a_new_agent_linked_to_the_old(
    agent, sponsor, team, signer, admin_user
):
    agent_retire(agent=agent, actor=Actor.system("test"), reason="replaced")
    again = agent_register(
        spiffe_id=agent.spiffe_id,
        name="Invoice bot v2",
        sponsor=sponsor,
        team=team,
        actor=Actor.for_user(admin_user),
    )
    assert again.pk != agent.pk
    assert again.previous_incarnation_id == agent.pk
    assert Agent.objects.get(pk=agent.pk).status == Agent.Status.RETIRED
    registered = AuditEvent.objects.get(agent_id=again.pk, verb="agent.registered")
    assert registered.data["previous_incarnation"] == agent.pk
    # The SVID now names the new agent; the old one keeps its own history.
    me = as_agent(again, signer).get("/api/v1/agents/me").json()
    assert me["name"] == "Invoice bot v2"
    page = web(admin_user).get(f"/agents/{again.pk}/").content.decode()
    assert f'href="/agents/{agent.pk}/"' in page
    # Never two live agents with one SPIFFE ID.
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        agent_register(
            spiffe_id=agent.spiffe_id,
            name="Impostor",
            sponsor=sponsor,
            team=team,
            actor=Actor.for_user(admin_user),
        )
    assert "spiffe_id" in refused.value.message_dict


@pytest.mark.parametrize("leaves", ["deactivated", "deleted"])
def test_a_team_whose_last_member_is_deactivated_or_deleted_orphans_its_agents(
    db, trust_domain, team, leaves
):
    from tests.factories import GroupFactory

    sponsor = UserFactory(username="elsewhere")
    sponsor.groups.add(GroupFactory(name="other"))
    last_member = UserFactory(username="last")
    last_member.groups.add(team)
    agent = AgentFactory(sponsor=sponsor, team=team)
    if leaves == "deactivated":
        deactivate(last_member)
    else:
        last_member.delete()
    agent.refresh_from_db()
    assert agent.orphan_reason == Agent.OrphanReason.TEAM_EMPTY
    assert verbs(agent)[-1] == "agent.orphaned"
