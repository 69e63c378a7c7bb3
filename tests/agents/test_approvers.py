"""Issue 10, item 3: nobody gives themselves the right to approve, and every change of who may
approve for an agent is evidence — through the admin, the user pages and the services."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from guardian.shortcuts import assign_perm, get_user_perms, remove_perm

from agents.models import Agent, BackupApprover
from approvals.models import AccessRequest
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals import conftest as approvals_conftest
from tests.approvals.conftest import decide, submit
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

privileges = approvals_conftest.privileges


def staff(username: str, *codenames: str):
    person = UserFactory(username=username, is_staff=True)
    person.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return person


def signed_in(person) -> Client:
    client = Client()
    client.force_login(person)
    return client


def events(verb: str, **filters):
    return list(AuditEvent.objects.filter(verb=verb, **filters).order_by("sequence"))


def approvers_page(agent) -> str:
    return f"/admin/agents/agent/{agent.pk}/approvers/"


@pytest.fixture
def mallory(db):
    """Staff with only the right to change agents (and to see them in admin)."""
    return staff("mallory", "change_agent", "view_agent")


@pytest.fixture
def keeper(db):
    """Staff who may manage approvers."""
    return staff("keeper", "change_agent", "view_agent", "manage_approvers")


# --- guardian's object-permission pages are no back door ------------------------------------


def test_it_closes_guardians_object_permission_pages_for_agents(
    agent, agent_api, privileges, mallory
):
    client = signed_in(mallory)
    base = f"/admin/agents/agent/{agent.pk}/permissions/"
    assert client.get(base).status_code == 404
    assert client.post(base, {"user": "mallory", "submit_manage_user": "1"}).status_code == 404
    manage = f"{base}user-manage/{mallory.pk}/"
    assert client.get(manage).status_code == 404
    posted = client.post(manage, {"permissions": ["approve_for_agent", "manage_agent"]})
    assert posted.status_code == 404
    assert get_user_perms(mallory, agent).count() == 0

    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    refused = decide(mallory, request_id)
    assert refused.status_code in (403, 404)
    assert AccessRequest.objects.get(pk=request_id).status == "pending"


def test_change_agent_alone_cannot_add_a_backup_approver(agent, mallory):
    accomplice = UserFactory(username="accomplice")
    response = signed_in(mallory).post(approvers_page(agent), {"add": "1", "user": accomplice.pk})
    assert response.status_code == 403
    assert "manage approvers" in response.content.decode()
    assert not BackupApprover.objects.exists()
    assert not accomplice.has_perm("agents.approve_for_agent", agent)
    (refusal,) = events("approvers.change_refused", agent_id=agent.pk)
    assert (refusal.actor_id, refusal.data["why"]) == ("mallory", "not_an_approver_manager")


def test_change_agent_alone_cannot_change_the_sponsor(agent, mallory, sponsor):
    change_url = f"/admin/agents/agent/{agent.pk}/change/"
    client = signed_in(mallory)
    assert 'name="sponsor"' not in client.get(change_url).content.decode()
    response = client.post(
        change_url,
        {
            "name": agent.name,
            "description": "",
            "sponsor": mallory.pk,
            "team": agent.team_id,
            "review_due": agent.review_due.isoformat(),
            "max_delegation_depth": 3,
        },
    )
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.sponsor == sponsor
    assert not mallory.has_perm("agents.approve_for_agent", agent)
    reassign = client.post(
        "/admin/agents/agent/",
        {
            "action": "reassign_sponsor",
            "_selected_action": [agent.pk],
            "apply": "Reassign",
            "sponsor": mallory.pk,
        },
    )
    assert reassign.status_code in (200, 302)
    agent.refresh_from_db()
    assert agent.sponsor == sponsor


def test_nobody_adds_themselves_not_even_a_superuser(agent, admin_user):
    response = signed_in(admin_user).post(
        approvers_page(agent), {"add": "1", "user": admin_user.pk}
    )
    assert response.status_code == 403
    assert "Nobody can give themselves the right to approve" in response.content.decode()
    assert not BackupApprover.objects.exists()
    assert "approve_for_agent" not in get_user_perms(admin_user, agent)
    (refusal,) = events("approvers.change_refused", agent_id=agent.pk)
    assert refusal.actor_id == "admin"
    assert refusal.data == {"action": "backup_approver_add", "user": "admin", "why": "self_grant"}
    assert verify_chain().ok


def test_nobody_makes_themselves_the_sponsor_in_admin(agent, admin_user, sponsor):
    response = signed_in(admin_user).post(
        f"/admin/agents/agent/{agent.pk}/change/",
        {
            "name": agent.name,
            "description": "",
            "sponsor": admin_user.pk,
            "team": agent.team_id,
            "review_due": agent.review_due.isoformat(),
            "max_delegation_depth": 3,
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["sponsor"]
    assert "Nobody can give themselves the right to approve" in errors[0]
    agent.refresh_from_db()
    assert agent.sponsor == sponsor
    (refusal,) = events("approvers.change_refused", agent_id=agent.pk)
    assert refusal.data["action"] == "sponsor_set"


# --- a person who manages approvers adds and removes one ------------------------------------


def test_a_backup_approver_added_in_admin_can_approve_and_once_removed_cannot(
    agent, agent_api, privileges, keeper
):
    deputy = UserFactory(username="deputy")
    client = signed_in(keeper)
    page = client.get(approvers_page(agent))
    assert page.status_code == 200
    assert "Add backup approver" in page.content.decode()

    added = client.post(approvers_page(agent), {"add": "1", "user": deputy.pk})
    assert added.status_code == 302
    backup = BackupApprover.objects.get(agent=agent, user=deputy)
    assert backup.added_by == keeper
    (event,) = events("approvers.backup_added", agent_id=agent.pk)
    assert (event.actor_id, event.data["user"]) == ("keeper", "deputy")
    assert "deputy" in client.get(f"/admin/agents/agent/{agent.pk}/change/").content.decode()

    first = submit(agent_api, "payments-api:refund", task_id="t-1").json()["id"]
    approved = decide(deputy, first)
    assert approved.status_code in (200, 201), approved.content
    assert approved.json()["status"] == "approved"

    removed = client.post(approvers_page(agent), {"remove": deputy.pk})
    assert removed.status_code == 302
    assert not BackupApprover.objects.filter(agent=agent).exists()
    (event,) = events("approvers.backup_removed", agent_id=agent.pk)
    assert (event.actor_id, event.data["user"]) == ("keeper", "deputy")
    second = submit(agent_api, "payments-api:refund", task_id="t-2").json()["id"]
    refused = decide(deputy, second)
    assert refused.status_code in (403, 404)
    assert AccessRequest.objects.get(pk=second).status == "pending"
    assert verify_chain().ok


def test_a_sponsor_is_not_added_twice_and_a_stranger_is_not_removed(agent, keeper, sponsor):
    client = signed_in(keeper)
    twice = client.post(approvers_page(agent), {"add": "1", "user": sponsor.pk})
    assert twice.status_code == 409
    stranger = UserFactory(username="stranger")
    assert client.post(approvers_page(agent), {"remove": stranger.pk}).status_code == 404
    assert client.post(approvers_page(agent), {"remove": "x"}).status_code == 404
    assert not BackupApprover.objects.exists()


# --- groups that confer approval ----------------------------------------------------------


def user_change(client, person, groups):
    return client.post(
        f"/admin/auth/user/{person.pk}/change/",
        {
            "username": person.username,
            "first_name": "",
            "last_name": "",
            "email": person.email,
            "is_active": "on",
            "groups": [group.pk for group in groups],
            "date_joined_0": person.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": person.date_joined.strftime("%H:%M:%S"),
        },
    )


@pytest.fixture
def approver_groups(agent, privileges):
    deputies = Group.objects.create(name="invoice-deputies")
    assign_perm("agents.approve_for_agent", deputies, agent)
    dba = Group.objects.create(name="dba")
    privileges["refund"].approver_group = dba
    privileges["refund"].save()
    return deputies, dba


def test_joining_and_leaving_an_approver_group_in_admin_is_evidence(
    agent, approver_groups, admin_user
):
    deputies, dba = approver_groups
    oncall = UserFactory(username="oncall")
    client = signed_in(admin_user)
    assert user_change(client, oncall, [deputies, dba]).status_code == 302
    assert set(oncall.groups.all()) == {deputies, dba}
    (on_agent,) = events("approvers.group_member_added", agent_id=agent.pk)
    assert on_agent.actor_id == "admin"
    assert on_agent.data == {
        "user": "oncall",
        "group": "invoice-deputies",
        "via": "agent_permission",
    }
    (on_privilege,) = events("approvers.group_member_added", agent_id=None)
    assert on_privilege.data["privileges"] == ["payments-api:refund"]
    assert on_privilege.data["group"] == "dba"

    assert user_change(client, oncall, []).status_code == 302
    assert oncall.groups.count() == 0
    removed = events("approvers.group_member_removed")
    assert {event.data["group"] for event in removed} == {"invoice-deputies", "dba"}
    assert verify_chain().ok


def test_nobody_puts_themselves_in_an_approver_group(approver_groups):
    deputies, dba = approver_groups
    for group in (deputies, dba):
        insider = staff(f"insider-{group.name}", "change_user", "view_user", "manage_approvers")
        response = user_change(signed_in(insider), insider, [group])
        assert response.status_code == 403
        assert insider.groups.count() == 0
        refusal = events("approvers.change_refused")[-1]
        assert refusal.actor_id == insider.username
        assert refusal.data == {
            "action": "group_member_add",
            "user": insider.username,
            "why": "self_grant",
            "group": group.name,
        }
    assert not AuditEvent.objects.filter(verb__startswith="approvers.group_member").exists()
    assert verify_chain().ok


def test_user_pages_alone_do_not_confer_approval(approver_groups):
    deputies, _ = approver_groups
    clerk = staff("clerk", "change_user", "view_user")
    friend = UserFactory(username="friend")
    assert user_change(signed_in(clerk), friend, [deputies]).status_code == 403
    assert friend.groups.count() == 0
    (refusal,) = events("approvers.change_refused")
    assert (refusal.actor_id, refusal.data["why"]) == ("clerk", "not_an_approver_manager")
    ordinary = Group.objects.create(name="readers")
    assert user_change(signed_in(clerk), friend, [ordinary]).status_code == 302
    assert list(friend.groups.all()) == [ordinary]


def test_an_approval_right_written_outside_the_services_is_still_evidence(agent):
    elsewhere = UserFactory(username="elsewhere")
    assign_perm("agents.approve_for_agent", elsewhere, agent)  # a shell, a script
    (event,) = events("approvers.permission_assigned", agent_id=agent.pk)
    assert (event.actor_type, event.actor_id) == ("system", "unattributed")
    assert event.data == {"holder": "user:elsewhere", "permission": "approve_for_agent"}
    deputies = Group.objects.create(name="deputies")
    assign_perm("agents.approve_for_agent", deputies, agent)
    remove_perm("agents.approve_for_agent", elsewhere, agent)
    assigned, removed = (
        events("approvers.permission_assigned")[-1],
        events("approvers.permission_removed")[-1],
    )
    assert assigned.data["holder"] == "group:deputies"
    assert removed.data["holder"] == "user:elsewhere"
    assert not elsewhere.has_perm("agents.approve_for_agent", agent)


def test_giving_the_manage_approvers_permission_in_admin_is_evidence(admin_user):
    lead = UserFactory(username="lead")
    client = signed_in(admin_user)
    manage = Permission.objects.get(codename="manage_approvers")
    response = client.post(
        f"/admin/auth/user/{lead.pk}/change/",
        {
            "username": "lead",
            "email": lead.email,
            "is_active": "on",
            "user_permissions": [manage.pk],
            "date_joined_0": lead.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": lead.date_joined.strftime("%H:%M:%S"),
        },
    )
    assert response.status_code == 302
    (event,) = events("approvers.manager_added")
    assert (event.actor_id, event.data["holder"]) == ("admin", "user:lead")


def test_a_sponsor_reassignment_says_approval_rights_moved(agent, keeper, sponsor, admin_user):
    successor = UserFactory(username="successor")
    deputy = UserFactory(username="deputy")
    client = signed_in(admin_user)
    client.post(approvers_page(agent), {"add": "1", "user": sponsor.pk})  # 409: sponsor
    assert client.post(approvers_page(agent), {"add": "1", "user": deputy.pk}).status_code == 302
    applied = client.post(
        "/admin/agents/agent/",
        {
            "action": "reassign_sponsor",
            "_selected_action": [agent.pk],
            "apply": "Reassign",
            "sponsor": deputy.pk,
        },
    )
    assert applied.status_code == 302
    (event,) = events("agent.sponsor_reassigned", agent_id=agent.pk)
    # The deputy approved already as a backup; the former sponsor loses the right.
    assert event.data["approve_for_agent"] == {"granted_to": [], "revoked_from": ["sponsor"]}
    agent.refresh_from_db()
    assert not sponsor.has_perm("agents.approve_for_agent", agent)
    assert Agent.objects.get(pk=agent.pk).sponsor == deputy
    del successor


def test_a_group_cleared_outside_a_request_is_evidence_too(agent, approver_groups):
    deputies, dba = approver_groups
    oncall = UserFactory(username="oncall")
    deputies.user_set.add(oncall)  # from the group's side
    oncall.groups.add(dba)
    oncall.groups.clear()
    added = events("approvers.group_member_added")
    removed = events("approvers.group_member_removed")
    assert [event.data["group"] for event in added] == ["invoice-deputies", "dba"]
    assert sorted(event.data["group"] for event in removed) == ["dba", "invoice-deputies"]
    assert {event.actor_id for event in added + removed} == {"unattributed"}
    assert removed[0].agent_id == agent.pk or removed[1].agent_id == agent.pk
