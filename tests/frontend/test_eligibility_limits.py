"""Changing an eligibility's limits in place, on the agent's page and in admin: the sponsor, a
person who manages the agent and an admin may; the audit keeps the old and new limits; the
agent's next request is decided on the new limits; bad input, a removed eligibility and people
who may not are refused in a sentence with nothing written."""

from datetime import UTC, datetime

import pytest
from django.test import Client
from guardian.shortcuts import assign_perm

from approvals.models import Eligibility
from approvals.services import eligibility_grant, eligibility_remove
from audit.models import AuditEvent
from tests.approvals.conftest import submit
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.eligibility]


def web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def eligibility(agent, privileges, sponsor) -> Eligibility:
    return eligibility_grant(
        agent=agent, privilege=privileges["read"], by=sponsor, max_duration_seconds=300
    )


def change(user, eligibility, client=None, **fields):
    form = {"max_duration_minutes": "", "environment": "", "ends_on": "", "reason": "", **fields}
    return (client or web(user)).post(
        f"/agents/{eligibility.agent_id}/eligibility/{eligibility.pk}/limits/", form
    )


def updates() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(verb="eligibility.updated"))


def test_the_sponsor_changes_the_limits_and_the_audit_keeps_old_and_new(sponsor, eligibility):
    browser = web(sponsor)
    response = change(
        sponsor,
        eligibility,
        client=browser,
        max_duration_minutes="20",
        environment="staging",
        ends_on="2099-06-30",
        reason="staging only from now on",
    )

    assert response.status_code == 302
    eligibility.refresh_from_db()
    assert (eligibility.max_duration_seconds, eligibility.environment) == (1200, "staging")
    assert eligibility.ends_at == datetime(2099, 7, 1, tzinfo=UTC)
    assert (eligibility.updated_by, eligibility.removed_at) == ("sponsor", None)
    (event,) = updates()
    assert (event.actor_id, event.agent_id) == ("sponsor", eligibility.agent_id)
    assert event.data == {
        "eligibility_id": eligibility.pk,
        "privilege": "payments-db:read",
        "old": {"max_duration_seconds": 300, "environment": "", "ends_at": None},
        "new": {
            "max_duration_seconds": 1200,
            "environment": "staging",
            "ends_at": "2099-07-01T00:00:00+00:00",
        },
        "reason": "staging only from now on",
    }
    page = browser.get(f"/agents/{eligibility.agent_id}/").content.decode()
    assert "at most 20 min, staging only, until 2099-07-01 00:00 UTC" in page
    assert "by sponsor" in page and "Change limits" in page
    assert Eligibility.objects.filter(agent_id=eligibility.agent_id).count() == 1  # in place


def test_the_next_request_is_decided_on_the_new_limits(sponsor, eligibility, agent_api):
    assert submit(agent_api, "payments-db:read", duration=600).json()["status"] == "denied"

    change(sponsor, eligibility, max_duration_minutes="10")

    body = submit(agent_api, "payments-db:read", duration=600, task_id="task-2").json()
    assert body["status"] == "approved"
    change(sponsor, eligibility, environment="staging")  # and the duration limit cleared
    body = submit(
        agent_api, "payments-db:read", task_id="task-3", context={"environment": "production"}
    ).json()
    assert body["status"] == "denied"
    assert body["decision"]["policies"] == ["eligibility-environment"]


def test_emptying_a_limit_removes_it_and_the_same_limits_record_nothing(sponsor, eligibility):
    change(sponsor, eligibility)  # every field empty: no limits beyond the privilege's
    change(sponsor, eligibility)

    eligibility.refresh_from_db()
    assert (eligibility.max_duration_seconds, eligibility.environment, eligibility.ends_at) == (
        None,
        "",
        None,
    )
    assert len(updates()) == 1


def test_a_limit_left_as_shown_keeps_its_exact_value(sponsor, agent, privileges):
    odd = eligibility_grant(
        agent=agent,
        privilege=privileges["refund"],
        by=sponsor,
        max_duration_seconds=90,
        ends_at=datetime(2099, 3, 4, 15, 30, tzinfo=UTC),
    )
    page = web(sponsor).get(f"/agents/{agent.pk}/").content.decode()
    assert f'id="id_eligibility_{odd.pk}_max_duration_minutes"' in page

    change(sponsor, odd, max_duration_minutes="2", ends_on="2099-03-04", environment="prod")

    odd.refresh_from_db()
    assert (odd.max_duration_seconds, odd.ends_at, odd.environment) == (
        90,
        datetime(2099, 3, 4, 15, 30, tzinfo=UTC),
        "prod",
    )


def test_a_manager_and_an_admin_may_change_limits(eligibility, agent, admin_user):
    manager = UserFactory(username="manager")
    assign_perm("agents.view_agent", manager, agent)
    assign_perm("agents.manage_agent", manager, agent)

    assert change(manager, eligibility, max_duration_minutes="3").status_code == 302
    assert change(admin_user, eligibility, max_duration_minutes="4").status_code == 302
    assert [event.actor_id for event in updates()] == ["manager", "admin"]


def test_a_team_member_may_not_and_an_outsider_gets_not_found(eligibility, team, outsider, agent):
    member = UserFactory(username="teammate")
    member.groups.add(team)

    refused = change(member, eligibility, max_duration_minutes="30")
    hidden = change(outsider, eligibility, max_duration_minutes="30")
    page = web(member).get(f"/agents/{agent.pk}/").content.decode()

    assert refused.status_code == 403
    assert "sponsor, a person who manages the agent, or an admin" in refused.content.decode()
    assert hidden.status_code == 404
    assert "Change limits" not in page
    eligibility.refresh_from_db()
    assert eligibility.max_duration_seconds == 300
    assert updates() == []


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"max_duration_minutes": "0"}, 400, "Check the limits below."),
        ({"max_duration_minutes": "abc"}, 400, "Check the limits below."),
        ({"max_duration_minutes": "120"}, 400, "between 1 second and payments-db:read"),
        ({"environment": "prod uction"}, 400, "An environment is a short name"),
        ({"ends_on": "2001-01-01"}, 400, "The end date must be in the future."),
        ({"ends_on": "someday"}, 400, "Check the limits below."),
    ],
)
def test_bad_limits_are_a_4xx_with_a_sentence_and_change_nothing(
    sponsor, eligibility, fields, status, message
):
    response = change(sponsor, eligibility, **fields)

    assert response.status_code == status
    assert message in response.content.decode()
    eligibility.refresh_from_db()
    assert (eligibility.max_duration_seconds, eligibility.environment, eligibility.ends_at) == (
        300,
        "",
        None,
    )
    assert updates() == []


def test_a_removed_eligibility_is_a_conflict_and_an_unknown_one_not_found(
    sponsor, eligibility, agent
):
    eligibility_remove(eligibility_id=eligibility.pk, agent=agent, by=sponsor)

    removed = change(sponsor, eligibility, max_duration_minutes="3")
    missing = web(sponsor).post(f"/agents/{agent.pk}/eligibility/999999/limits/", {})

    assert removed.status_code == 409
    assert "was removed by sponsor; make it eligible again instead." in removed.content.decode()
    assert missing.status_code == 404
    assert updates() == []


# --- admin ---------------------------------------------------------------------------------------


def admin_form(**fields):
    return {
        "max_duration_seconds": "",
        "environment": "",
        "ends_at_0": "",
        "ends_at_1": "",
        **fields,
    }


def test_an_admin_changes_the_limits_in_django_admin(admin_user, eligibility):
    client = web(admin_user)
    url = f"/admin/approvals/eligibility/{eligibility.pk}/change/"
    assert client.get(url).status_code == 200

    response = client.post(
        url,
        admin_form(
            max_duration_seconds="600",
            environment="production",
            ends_at_0="2099-01-02",
            ends_at_1="03:04:05",
        ),
    )

    assert response.status_code == 302, response.content
    eligibility.refresh_from_db()
    assert (eligibility.max_duration_seconds, eligibility.environment, eligibility.updated_by) == (
        600,
        "production",
        "admin",
    )
    assert eligibility.ends_at == datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    (event,) = updates()
    assert event.data["old"]["max_duration_seconds"] == 300
    assert event.data["new"]["environment"] == "production"
    assert event.data["reason"] == "changed in admin"


def test_admin_refusals_are_shown_and_change_nothing(admin_user, eligibility, agent):
    client = web(admin_user)
    url = f"/admin/approvals/eligibility/{eligibility.pk}/change/"

    too_long = client.post(url, admin_form(max_duration_seconds="99999"), follow=True)

    assert "between 1 second and payments-db:read" in too_long.content.decode()
    eligibility.refresh_from_db()
    assert eligibility.max_duration_seconds == 300
    eligibility_remove(eligibility_id=eligibility.pk, agent=agent, by=admin_user)
    assert client.post(url, admin_form(max_duration_seconds="60")).status_code == 403
    assert updates() == []


def test_a_staff_member_who_does_not_manage_the_agent_is_refused_in_admin(eligibility):
    from django.contrib.auth.models import Permission

    staff = UserFactory(username="clerk", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="approvals",
            codename__in=["view_eligibility", "change_eligibility"],
        )
    )
    client = web(staff)
    url = f"/admin/approvals/eligibility/{eligibility.pk}/change/"

    refused = client.post(url, admin_form(max_duration_seconds="60"), follow=True)

    assert "sponsor, a person who manages the agent, or an admin" in refused.content.decode()
    eligibility.refresh_from_db()
    assert eligibility.max_duration_seconds == 300
    assert updates() == []
