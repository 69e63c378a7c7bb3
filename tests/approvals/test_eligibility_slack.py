"""An agent's request to become eligible reaches the people who decide its requests in Slack, as
an access request does: a message with Approve / Deny to each of them and the team's channel,
through a real Celery worker and the fake Slack Web API; the buttons come back through the
signed interaction endpoint and decide it with the eligibility service, and every message then
shows the final state."""

import json
import time

import pytest
from django.test import Client

from approvals.models import Eligibility, EligibilityRequest, EligibilitySlackMessage
from audit.models import AuditEvent
from tests.approvals.test_slack import (  # noqa: F401  (fixtures)
    action_body,
    click,
    fake_slack,
    posted_to,
    signed,
    slack,
    slack_worker,
)
from tests.factories import SponsorProfileFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.eligibility]

APPROVE = "custody_eligibility_approve"
DENY = "custody_eligibility_deny"


def ask(agent_api, privilege="payments-db:write", **extra) -> int:
    body = {"privilege": privilege, "justification": "Nightly corrections need it.", **extra}
    response = agent_api.post("/api/v1/eligibility/requests", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def buttons(message) -> list[dict]:
    actions = [b for b in message.params["blocks"] if b["type"] == "actions"]
    return actions[0]["elements"] if actions else []


def test_an_eligibility_request_reaches_every_approver_and_the_team_with_buttons(
    slack,  # noqa: F811
    agent_api,
    privileges,
    backup_approver,
):
    asked = ask(agent_api, max_duration_seconds=900, environment="production")

    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 3)
    assert posted_to(slack) == {"USPONSOR1", "UBACKUP01", "CTEAM0001"}
    message = slack.of("chat.postMessage")[0]
    rendered = json.dumps(message.params["blocks"])
    assert "Eligibility request: payments-db:write (high)" in rendered
    assert "Agent: Invoice bot" in rendered and "Sponsor: sponsor" in rendered
    assert "Limits asked: at most 15 min, production only" in rendered
    assert "Why: Nightly corrections need it." in rendered
    assert [(b["action_id"], b["value"]) for b in buttons(message)] == [
        (APPROVE, str(asked)),
        (DENY, str(asked)),
    ]
    assert EligibilitySlackMessage.objects.filter(eligibility_request_id=asked).count() == 3


def test_approving_in_slack_makes_the_agent_eligible_and_updates_every_message(
    slack,  # noqa: F811
    agent_api,
    agent,
    privileges,
    backup_approver,
):
    asked = ask(agent_api, max_duration_seconds=900)
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 3)

    response = click("UBACKUP01", APPROVE, asked)

    assert response.status_code == 200
    eligibility_request = EligibilityRequest.objects.get(pk=asked)
    assert (eligibility_request.status, eligibility_request.decided_by) == ("approved", "backup")
    eligibility = Eligibility.objects.in_force().get(agent=agent)
    assert (eligibility.privilege.name, eligibility.max_duration_seconds) == (
        "payments-db:write",
        900,
    )
    decided = AuditEvent.objects.get(verb="eligibility.request_decided")
    assert (decided.actor_id, decided.data["verdict"], decided.data["channel"]) == (
        "backup",
        "approve",
        "slack",
    )
    assert slack.wait_for(lambda: len(slack.of("chat.update")) == 3)
    for update in slack.of("chat.update"):
        assert buttons(update) == []
        assert "Approved by backup" in json.dumps(update.params["blocks"])
    assert slack.wait_for(lambda: slack.of("chat.postEphemeral"))
    assert "is approved" in slack.of("chat.postEphemeral")[0].params["text"]


def test_denying_in_slack_makes_nothing_eligible_and_a_second_click_changes_nothing(
    slack,  # noqa: F811
    agent_api,
    agent,
    privileges,
    backup_approver,
):
    asked = ask(agent_api)
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 3)

    click("USPONSOR1", DENY, asked)
    late = click("UBACKUP01", APPROVE, asked)

    assert late.status_code == 200
    assert EligibilityRequest.objects.get(pk=asked).status == "denied"
    assert not Eligibility.objects.filter(agent=agent).exists()
    assert AuditEvent.objects.filter(verb="eligibility.request_decided").count() == 1
    assert slack.wait_for(lambda: len(slack.of("chat.postEphemeral")) == 2)
    told = sorted(call.params["text"] for call in slack.of("chat.postEphemeral"))
    assert told[0] == f"Eligibility request #{asked} is already denied."
    assert slack.wait_for(lambda: len(slack.of("chat.update")) == 3)
    assert all(
        "Denied by sponsor" in json.dumps(update.params["blocks"])
        for update in slack.of("chat.update")
    )


def test_a_slack_user_who_may_not_decide_it_changes_nothing(
    slack,  # noqa: F811
    agent_api,
    agent,
    privileges,
):
    asked = ask(agent_api)
    bystander = UserFactory(username="bystander")
    SponsorProfileFactory(user=bystander, slack_user_id="UBYSTAND1")

    click("UBYSTAND1", APPROVE, asked)  # a person Custody knows, not an approver
    click("UNOBODY01", APPROVE, asked)  # nobody Custody knows

    assert EligibilityRequest.objects.get(pk=asked).status == "pending"
    assert not Eligibility.objects.filter(agent=agent).exists()
    assert slack.wait_for(lambda: len(slack.of("chat.postEphemeral")) == 2)
    assert {call.params["text"] for call in slack.of("chat.postEphemeral")} == {
        "You can't approve this request in Custody."
    }
    assert AuditEvent.objects.filter(
        verb="slack.rejected", data__eligibility_request_id=asked
    ).exists()


def test_a_badly_signed_or_replayed_click_decides_nothing_twice(
    slack,  # noqa: F811
    agent_api,
    agent,
    privileges,
):
    asked = ask(agent_api)
    body = action_body("USPONSOR1", APPROVE, str(asked), action_ts="1700000001.000001")

    forged = Client().post(
        "/slack/interactions",
        body,
        content_type="application/x-www-form-urlencoded",
        **signed(body, secret="not-the-signing-secret-at-all-000"),
    )
    stale = Client().post(
        "/slack/interactions",
        body,
        content_type="application/x-www-form-urlencoded",
        **signed(body, timestamp=int(time.time()) - 600),
    )

    assert (forged.status_code, stale.status_code) == (401, 401)
    assert EligibilityRequest.objects.get(pk=asked).status == "pending"

    for _ in range(2):  # Slack retries: the same callback, delivered twice
        replay = Client().post(
            "/slack/interactions",
            body,
            content_type="application/x-www-form-urlencoded",
            **signed(body),
        )
        assert replay.status_code == 200
    assert EligibilityRequest.objects.get(pk=asked).status == "approved"
    assert AuditEvent.objects.filter(verb="eligibility.request_decided").count() == 1
    assert Eligibility.objects.filter(agent=agent).count() == 1


def test_above_the_slack_risk_ceiling_it_is_approved_in_the_browser_only(
    slack,  # noqa: F811
    agent_api,
    agent,
    privileges,
):
    asked = ask(agent_api, privilege="prod-cluster:admin")  # critical; Slack's ceiling is high
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 2)
    message = slack.of("chat.postMessage")[0]
    assert [b["action_id"] for b in buttons(message)] == ["custody_review", DENY]

    click("USPONSOR1", APPROVE, asked)  # a forged button: the service refuses it

    assert EligibilityRequest.objects.get(pk=asked).status == "pending"
    refusal = "Eligibility for critical privileges is approved in Custody's web app."
    # Wait for this answer among the ephemerals (an earlier test's late one may arrive too).
    assert slack.wait_for(
        lambda: refusal in [m.params["text"] for m in slack.of("chat.postEphemeral")]
    )
