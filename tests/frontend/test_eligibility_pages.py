"""Eligibility on the agent's page and in admin: the sponsor, a person who manages the agent and
an admin make it eligible and remove eligibility; a team member sees it and cannot change it; an
outsider does not learn the agent exists."""

import pytest
from django.test import Client
from guardian.shortcuts import assign_perm

from approvals.models import Eligibility
from audit.models import AuditEvent
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.eligibility]


def web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def read(privileges):
    return privileges["read"]


def grant_form(privilege, **fields):
    return {"privilege": privilege.pk, **fields}


def test_the_sponsor_makes_the_agent_eligible_with_limits(sponsor, agent, read):
    response = web(sponsor).post(
        f"/agents/{agent.pk}/eligibility/",
        grant_form(read, max_duration_minutes="5", environment="staging", ends_on="2099-12-30"),
    )

    assert response.status_code == 302
    eligibility = Eligibility.objects.get(agent=agent, privilege=read)
    assert (eligibility.max_duration_seconds, eligibility.environment, eligibility.granted_by) == (
        300,
        "staging",
        "sponsor",
    )
    assert eligibility.ends_at.isoformat() == "2099-12-31T00:00:00+00:00"
    page = web(sponsor).get(f"/agents/{agent.pk}/").content.decode()
    assert "payments-db:read" in page
    assert "at most 5 min, staging only, until 2099-12-31 00:00 UTC" in page
    event = AuditEvent.objects.get(verb="eligibility.granted")
    assert (event.actor_id, event.agent_id, event.data["privilege"]) == (
        "sponsor",
        agent.pk,
        "payments-db:read",
    )


def test_the_sponsor_removes_it_and_the_page_keeps_the_history(sponsor, agent, read):
    web(sponsor).post(f"/agents/{agent.pk}/eligibility/", grant_form(read))
    eligibility = Eligibility.objects.get(agent=agent)

    response = web(sponsor).post(f"/agents/{agent.pk}/eligibility/{eligibility.pk}/remove/")
    again = web(sponsor).post(f"/agents/{agent.pk}/eligibility/{eligibility.pk}/remove/")

    assert response.status_code == 302
    assert again.status_code == 409
    assert "already removed by sponsor" in again.content.decode()
    page = web(sponsor).get(f"/agents/{agent.pk}/").content.decode()
    assert "Not eligible for anything" in page
    assert "History (1)" in page
    assert AuditEvent.objects.filter(verb="eligibility.removed", actor_id="sponsor").count() == 1


def test_a_team_member_sees_it_but_may_not_change_it(agent, team, read, sponsor):
    web(sponsor).post(f"/agents/{agent.pk}/eligibility/", grant_form(read))
    member = UserFactory(username="teammate")
    member.groups.add(team)
    eligibility = Eligibility.objects.get(agent=agent)

    page = web(member).get(f"/agents/{agent.pk}/")
    refused = web(member).post(f"/agents/{agent.pk}/eligibility/", grant_form(read))
    removal = web(member).post(f"/agents/{agent.pk}/eligibility/{eligibility.pk}/remove/")

    assert page.status_code == 200
    assert "payments-db:read" in page.content.decode()
    assert 'id="eligibility-form"' not in page.content.decode()
    assert refused.status_code == 403
    assert "or an admin may change what it is eligible for" in refused.content.decode()
    assert removal.status_code == 403
    assert Eligibility.objects.get(pk=eligibility.pk).removed_at is None


def test_an_outsider_gets_not_found(agent, outsider, read):
    response = web(outsider).post(f"/agents/{agent.pk}/eligibility/", grant_form(read))

    assert response.status_code == 404
    assert not Eligibility.objects.exists()


def test_a_person_who_manages_the_agent_and_an_admin_may(agent, read, privileges, admin_user):
    manager = UserFactory(username="manager")
    assign_perm("agents.view_agent", manager, agent)
    assign_perm("agents.manage_agent", manager, agent)

    by_manager = web(manager).post(f"/agents/{agent.pk}/eligibility/", grant_form(read))
    by_admin = web(admin_user).post(
        f"/agents/{agent.pk}/eligibility/", grant_form(privileges["refund"])
    )

    assert (by_manager.status_code, by_admin.status_code) == (302, 302)
    assert set(Eligibility.objects.values_list("granted_by", flat=True)) == {"manager", "admin"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_duration_minutes": "0"}, "Check the form below."),
        ({"max_duration_minutes": "120"}, "between 1 second and payments-db:read"),
        ({"environment": "prod uction"}, "An environment is a short name"),
        ({"ends_on": "2001-01-01"}, "The end date must be in the future."),
        ({"privilege": "999999"}, "Check the form below."),
    ],
)
def test_bad_input_is_a_4xx_with_a_sentence_and_writes_nothing(
    sponsor, agent, read, fields, message
):
    response = web(sponsor).post(f"/agents/{agent.pk}/eligibility/", {**grant_form(read), **fields})

    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Eligibility.objects.exists()
    assert not AuditEvent.objects.filter(verb__startswith="eligibility.").exists()


def test_granting_what_is_already_in_force_is_a_conflict(sponsor, agent, read):
    web(sponsor).post(f"/agents/{agent.pk}/eligibility/", grant_form(read))

    again = web(sponsor).post(f"/agents/{agent.pk}/eligibility/", grant_form(read))

    assert again.status_code == 409
    assert "Invoice bot is already eligible for payments-db:read" in again.content.decode()
    assert Eligibility.objects.count() == 1


# --- admin ---------------------------------------------------------------------------------------


def test_an_admin_grants_and_removes_in_django_admin(admin_user, agent, read):
    client = web(admin_user)

    added = client.post(
        "/admin/approvals/eligibility/add/",
        {
            "agent": agent.pk,
            "privilege": read.pk,
            "max_duration_seconds": "600",
            "environment": "",
            "reason": "in admin",
        },
    )
    assert added.status_code == 302, added.content
    eligibility = Eligibility.objects.get(agent=agent, privilege=read)
    assert (eligibility.granted_by, eligibility.max_duration_seconds) == ("admin", 600)

    twice = client.post(
        "/admin/approvals/eligibility/add/",
        {"agent": agent.pk, "privilege": read.pk, "environment": "", "reason": ""},
        follow=True,
    )
    assert "already eligible" in twice.content.decode()
    assert Eligibility.objects.count() == 1

    removed = client.post(
        "/admin/approvals/eligibility/",
        {"action": "remove_eligibility", "_selected_action": [eligibility.pk]},
    )
    assert removed.status_code == 302
    assert Eligibility.objects.get(pk=eligibility.pk).removed_by == "admin"
    verbs = list(
        AuditEvent.objects.filter(verb__startswith="eligibility.").values_list("verb", flat=True)
    )
    assert verbs == ["eligibility.granted", "eligibility.removed"]
    assert client.get(f"/admin/approvals/eligibility/{eligibility.pk}/delete/").status_code == 403
