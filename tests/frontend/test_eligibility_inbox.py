"""An agent's request to become eligible waits in the inbox of the people who decide its
requests, who approve or deny it there; nobody else sees it or can decide it."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from approvals.models import Eligibility, EligibilityRequest
from audit.models import AuditEvent
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.eligibility]


def web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def asked(agent_api, privileges) -> int:
    response = agent_api.post(
        "/api/v1/eligibility/requests",
        {
            "privilege": "payments-db:write",
            "justification": "Nightly corrections need it.",
            "max_duration_seconds": 900,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()["id"]


def decide(user, eligibility_request_id, *, client=None, **form):
    return (client or web(user)).post(
        f"/inbox/eligibility/{eligibility_request_id}/decide/",
        {"verdict": "approve", "comment": "", **form},
    )


def test_it_waits_in_the_inbox_of_each_person_who_may_decide_it(asked, sponsor, backup_approver):
    for person in (sponsor, backup_approver):
        page = web(person).get("/inbox/").content.decode()
        assert f'id="inbox-eligibility-{asked}"' in page
        assert "Agents asking to become eligible (1)" in page
        assert "payments-db:write" in page and "at most 15 min" in page
        assert "Nightly corrections need it." in page


def test_the_sponsor_approves_it_from_the_inbox(asked, sponsor, agent, agent_api):
    browser = web(sponsor)
    response = decide(sponsor, asked, client=browser, comment="for the nightly run")

    assert response.status_code == 302 and response["Location"] == "/inbox/"
    eligibility = Eligibility.objects.in_force().get(agent=agent)
    assert (eligibility.privilege.name, eligibility.max_duration_seconds) == (
        "payments-db:write",
        900,
    )
    polled = agent_api.get(f"/api/v1/eligibility/requests/{asked}").json()
    assert (polled["status"], polled["comment"]) == ("approved", "for the nightly run")
    page = browser.get("/inbox/").content.decode()
    assert f"inbox-eligibility-{asked}" not in page
    assert f"Eligibility request #{asked} (payments-db:write for Invoice bot) is approved." in page
    event = AuditEvent.objects.get(verb="eligibility.request_decided")
    assert (event.actor_id, event.data["channel"]) == ("sponsor", "web")


def test_a_denial_from_the_inbox_makes_nothing_eligible_and_is_decided_once(
    asked, sponsor, backup_approver, agent
):
    denied = decide(backup_approver, asked, verdict="deny", comment="not this quarter")
    again = decide(sponsor, asked)

    assert denied.status_code == 302
    assert again.status_code == 409
    assert f"Eligibility request #{asked} is already denied." in again.content.decode()
    assert EligibilityRequest.objects.get(pk=asked).status == "denied"
    assert not Eligibility.objects.filter(agent=agent).exists()


def test_a_team_member_who_may_not_decide_sees_nothing_and_is_refused(asked, team, agent):
    member = UserFactory(username="teammate")
    member.groups.add(team)

    page = web(member).get("/inbox/").content.decode()
    refused = decide(member, asked)

    assert f"inbox-eligibility-{asked}" not in page
    assert refused.status_code == 403
    assert "You may not decide requests for this agent." in refused.content.decode()
    assert EligibilityRequest.objects.get(pk=asked).status == "pending"


def test_an_outsider_gets_not_found(asked, outsider):
    assert decide(outsider, asked).status_code == 404
    assert decide(outsider, 999999).status_code == 404
    assert EligibilityRequest.objects.get(pk=asked).status == "pending"


def test_bad_input_is_a_400_with_a_sentence_and_decides_nothing(asked, sponsor):
    response = decide(sponsor, asked, verdict="maybe")

    assert response.status_code == 400
    assert "Choose approve or deny." in response.content.decode()
    assert EligibilityRequest.objects.get(pk=asked).status == "pending"


def test_signed_out_people_are_sent_to_sign_in(asked):
    response = Client().post(f"/inbox/eligibility/{asked}/decide/", {"verdict": "approve"})

    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert EligibilityRequest.objects.get(pk=asked).status == "pending"


def test_an_agent_cannot_decide_through_the_inbox(asked, signer, agent):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")

    response = client.post(f"/inbox/eligibility/{asked}/decide/", {"verdict": "approve"})

    assert response.status_code in (302, 403)
    assert EligibilityRequest.objects.get(pk=asked).status == "pending"
