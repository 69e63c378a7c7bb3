"""Approvals in Slack, through signed callbacks and a fake Slack Web API that the real
WebClient talks to; notifications go out through a real Celery worker."""

import hashlib
import hmac
import json
import re
import time
from urllib.parse import urlencode

import pytest
from django.test import Client

from agents.models import TeamProfile
from approvals.models import AccessRequest, Decision, Grant
from audit.models import AuditEvent
from tests.approvals.conftest import decide, intent, submit
from tests.factories import SponsorProfileFactory, UserFactory
from tests.fake_slack import FakeSlack
from tests.workers import Worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SECRET = "test-signing-secret-0123456789abcdef"
SLACK_ENV = {
    "SLACK_BOT_TOKEN": "xoxb-test",
    "SLACK_SIGNING_SECRET": SECRET,
    "SLACK_TEAM_ID": "T0CUSTODY",
    "SLACK_APP_ID": "A0CUSTODY",
}


@pytest.fixture(scope="module")
def fake_slack():
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def slack_worker(django_db_setup, django_db_blocker, fake_slack):
    from django.conf import settings

    with django_db_blocker.unblock():
        worker = Worker(
            broker_url=settings.CELERY_BROKER_URL,
            beat=False,
            queues="notifications",
            app="tests.celery_app",
            env={**SLACK_ENV, "SLACK_API_URL": fake_slack.url},
        )
    yield worker
    worker.stop()


@pytest.fixture
def slack(settings, fake_slack, slack_worker, team):
    for name, value in SLACK_ENV.items():
        setattr(settings, name, value)
    settings.SLACK_API_URL = fake_slack.url
    TeamProfile.objects.create(group=team, slack_channel_id="CTEAM0001")
    fake_slack.reset()
    yield fake_slack
    fake_slack.reset()


def signed(body: str, *, timestamp: int | None = None, secret: str = SECRET) -> dict:
    timestamp = int(time.time()) if timestamp is None else timestamp
    base = f"v0:{timestamp}:{body}".encode()
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"HTTP_X_SLACK_REQUEST_TIMESTAMP": str(timestamp), "HTTP_X_SLACK_SIGNATURE": signature}


def action_body(
    user_id: str,
    action_id: str,
    value: str,
    *,
    action_ts: str | None = None,
    team: str = "T0CUSTODY",
) -> str:
    payload = {
        "type": "block_actions",
        "api_app_id": "A0CUSTODY",
        "team": {"id": team},
        "user": {"id": user_id, "team_id": team},
        "channel": {"id": "D0DM00001"},
        "trigger_id": "1337.42",
        "response_url": "https://hooks.example/1",
        "actions": [
            {
                "action_id": action_id,
                "value": value,
                "type": "button",
                "action_ts": action_ts or f"{time.time():.6f}",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)})


def click(user_id, action_id, request_id, **kwargs):
    body = action_body(user_id, action_id, str(request_id), **kwargs)
    return Client().post(
        "/slack/interactions",
        body,
        content_type="application/x-www-form-urlencoded",
        **signed(body),
    )


def posted_to(fake, request_id=None):
    return {c.params["channel"] for c in fake.of("chat.postMessage")}


def mrkdwn_texts(blocks) -> list[str]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(blocks)
    return found


def test_a_pending_request_reaches_every_approver_and_the_team(
    slack, agent_api, privileges, backup_approver
):
    body = submit(agent_api, "payments-api:refund").json()
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 3)
    assert posted_to(slack) == {"USPONSOR1", "UBACKUP01", "CTEAM0001"}
    message = slack.of("chat.postMessage")[0].params
    rendered = json.dumps(message["blocks"])
    assert "Invoice bot" in rendered and "spiffe://example.test/agents/invoice-bot" in rendered
    assert "payments-api:refund (medium)" in rendered
    assert "3 invoices do not match the ledger." in rendered
    assert "Approvals: 0 of 1" in rendered and "task-1" in rendered
    # Durations in words and the one date format, as on the web pages.
    assert "Duration asked: 10 min" in rendered
    assert re.search(r"Decide by \d{1,2} [A-Z][a-z]{2} \d{4}, \d\d:\d\d UTC", rendered)
    actions = [b for b in message["blocks"] if b["type"] == "actions"][0]["elements"]
    assert [a["action_id"] for a in actions] == [
        "custody_approve",
        "custody_deny",
        "custody_comment",
    ]
    assert all(a.get("value") == str(body["id"]) for a in actions)


def test_approving_in_slack_issues_the_grant_and_updates_every_message(
    slack, agent_api, privileges, backup_approver
):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 3)
    started = time.monotonic()
    response = click("USPONSOR1", "custody_approve", request_id)
    assert response.status_code == 200
    assert time.monotonic() - started < 3
    assert AccessRequest.objects.get(pk=request_id).status == "approved"
    assert Grant.objects.filter(access_request_id=request_id).count() == 1
    assert Decision.objects.get(access_request_id=request_id).channel == "slack"
    assert slack.wait_for(lambda: len(slack.of("chat.update")) == 3)
    for update in slack.of("chat.update"):
        assert not [b for b in update.params["blocks"] if b["type"] == "actions"]
        assert "Approved: approved by sponsor (slack" in json.dumps(update.params["blocks"])
        assert re.search(
            r"Grant #\d+ in force until \d{1,2} [A-Z][a-z]{2} \d{4}, ",
            json.dumps(update.params["blocks"]),
        )


def submit_modal(view: dict, user_id: str, verdict: str | None, comment: str | None, n: int = 1):
    values = {}
    if verdict is not None:
        values["verdict"] = {"value": {"selected_option": {"value": verdict}}}
    if comment is not None:
        values["comment"] = {"value": {"value": comment}}
    submission = {
        "type": "view_submission",
        "api_app_id": "A0CUSTODY",
        "team": {"id": "T0CUSTODY"},
        "user": {"id": user_id},
        "view": {
            "id": f"V{n}",
            "hash": f"h{n}",
            "callback_id": view["callback_id"],
            "private_metadata": view["private_metadata"],
            "state": {"values": values},
        },
    }
    body = urlencode({"payload": json.dumps(submission)})
    return Client().post(
        "/slack/interactions",
        body,
        content_type="application/x-www-form-urlencoded",
        **signed(body),
    )


def test_denying_in_slack_asks_for_the_reason_first(slack, agent_api, privileges):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 2)

    assert click("USPONSOR1", "custody_deny", request_id).status_code == 200

    assert AccessRequest.objects.get(pk=request_id).status == "pending"  # not yet: the modal
    view = slack.of("views.open")[0].params["view"]
    verdict_block = [b for b in view["blocks"] if b.get("block_id") == "verdict"][0]
    assert verdict_block["element"]["initial_option"]["value"] == "deny"
    without = submit_modal(view, "USPONSOR1", "deny", "", n=1)
    assert without.json() == {
        "response_action": "errors",
        "errors": {
            "comment": "Give a reason for denying: the agent's sponsor and the audit log read it."
        },
    }
    assert not Decision.objects.filter(access_request_id=request_id).exists()
    assert (
        submit_modal(view, "USPONSOR1", "deny", "Refunds wait for Monday.", n=2).status_code == 200
    )
    assert AccessRequest.objects.get(pk=request_id).status == "denied"
    assert Decision.objects.get(access_request_id=request_id).comment == "Refunds wait for Monday."
    assert slack.wait_for(lambda: len(slack.of("chat.update")) == 2)
    assert "Denied" in json.dumps(slack.of("chat.update")[-1].params["blocks"])


def test_the_slack_message_names_who_may_approve_and_the_count_rule(
    slack, agent_api, privileges, backup_approver
):
    submit(agent_api, "payments-db:write")
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 3)
    rendered = json.dumps(slack.of("chat.postMessage")[0].params["blocks"], ensure_ascii=False)
    assert "Approvals: 0 of 2 — waiting for backup and sponsor" in rendered
    assert "2 approvals: policy high-risk-two-approvals asks 2; the privilege asks 1" in rendered


def test_a_partial_approval_in_slack_reads_as_progress(
    slack, agent_api, privileges, backup_approver
):
    request_id = submit(agent_api, "payments-db:write").json()["id"]
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 3)

    click("UBACKUP01", "custody_approve", request_id)

    assert slack.wait_for(lambda: slack.of("chat.postEphemeral"))
    assert slack.of("chat.postEphemeral")[0].params["text"] == (
        "Recorded: 1 of 2, waiting for sponsor."
    )
    assert slack.wait_for(lambda: len(slack.of("chat.update")) == 3)
    update = json.dumps(slack.of("chat.update")[0].params["blocks"], ensure_ascii=False)
    assert "Approvals: 1 of 2 — waiting for sponsor" in update
    assert "custody_approve" in update  # still open for the sponsor


def test_the_initiator_is_refused_in_slack_with_the_pages_sentence(
    slack, agent_api, privileges, backup_approver
):
    body = submit(agent_api, "payments-api:refund", context={"initiated_by": "sponsor"}).json()

    click("USPONSOR1", "custody_approve", body["id"])
    click("USPONSOR1", "custody_deny", body["id"])

    assert slack.wait_for(lambda: len(slack.of("chat.postEphemeral")) == 2)
    for told in slack.of("chat.postEphemeral"):
        assert told.params["text"] == "You initiated this request, so someone else must decide it."
    assert not slack.of("views.open")
    assert not Decision.objects.filter(access_request_id=body["id"]).exists()


def test_too_few_approvers_escalates_in_slack_at_once_to_the_team_and_the_sponsor(
    slack, agent_api, privileges
):
    request_id = submit(agent_api, "payments-db:write").json()["id"]

    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 4)
    escalations = [
        c
        for c in slack.of("chat.postMessage")
        if "Escalated: too few people may approve" in json.dumps(c.params["blocks"])
    ]
    assert {c.params["channel"] for c in escalations} == {"USPONSOR1", "CTEAM0001"}
    assert "escalated to team payments-platform" in json.dumps(escalations[0].params["blocks"])
    assert AccessRequest.objects.get(pk=request_id).escalated_at is not None


def test_the_sponsor_hears_of_an_escalation_even_without_the_right_to_approve(
    slack, agent_api, privileges, agent, sponsor
):
    from guardian.shortcuts import remove_perm

    remove_perm("agents.approve_for_agent", sponsor, agent)  # nobody may approve now

    submit(agent_api, "payments-api:refund")

    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 3)
    channels = sorted(c.params["channel"] for c in slack.of("chat.postMessage"))
    assert channels == ["CTEAM0001", "CTEAM0001", "USPONSOR1"]  # the request, its escalation
    to_sponsor = slack.of("chat.postMessage")[
        [c.params["channel"] for c in slack.of("chat.postMessage")].index("USPONSOR1")
    ]
    assert "nobody may approve; escalated to team payments-platform" in json.dumps(
        to_sponsor.params["blocks"]
    )


def test_a_decision_on_the_web_updates_the_slack_messages(slack, agent_api, privileges, sponsor):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 2)
    assert decide(sponsor, request_id).json()["status"] == "approved"
    assert slack.wait_for(lambda: len(slack.of("chat.update")) == 2)
    assert "approved by sponsor (api" in json.dumps(slack.of("chat.update")[0].params["blocks"])


def test_a_bulk_deny_in_the_inbox_updates_every_message_of_each_request(
    slack, agent_api, privileges, sponsor
):
    ids = [submit(agent_api, "payments-api:refund", task_id=f"t-{n}").json()["id"] for n in (1, 2)]
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 4)
    web = Client()
    web.force_login(sponsor)

    response = web.post("/inbox/deny/", {"reason": "A flood.", "request": [str(i) for i in ids]})

    assert response.status_code == 302
    assert slack.wait_for(lambda: len(slack.of("chat.update")) == 4)
    updated = {(c.params["channel"], c.params["ts"]) for c in slack.of("chat.update")}
    assert len(updated) == 4  # each of the four messages, once
    for update in slack.of("chat.update"):
        assert "Denied" in json.dumps(update.params["blocks"])


def test_expiry_and_cancel_also_reach_slack(slack, agent_api, privileges):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 2)
    agent_api.post(f"/api/v1/requests/{request_id}/cancel")
    assert slack.wait_for(lambda: len(slack.of("chat.update")) == 2)
    assert "Cancelled" in json.dumps(slack.of("chat.update")[0].params["blocks"])


def test_a_forged_signature_is_refused_and_audited(slack, agent_api, privileges):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    body = action_body("USPONSOR1", "custody_approve", str(request_id))
    response = Client().post(
        "/slack/interactions",
        body,
        content_type="application/x-www-form-urlencoded",
        **signed(body, secret="not-the-secret"),
    )
    assert response.status_code == 401
    assert AccessRequest.objects.get(pk=request_id).status == "pending"
    assert AuditEvent.objects.filter(verb="slack.rejected", data__why="bad_signature").exists()


def test_a_stale_timestamp_is_refused(slack, agent_api, privileges):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    body = action_body("USPONSOR1", "custody_approve", str(request_id))
    response = Client().post(
        "/slack/interactions",
        body,
        content_type="application/x-www-form-urlencoded",
        **signed(body, timestamp=int(time.time()) - 301),
    )
    assert response.status_code == 401
    assert AccessRequest.objects.get(pk=request_id).status == "pending"


def test_a_replayed_payload_decides_nothing_twice(slack, agent_api, privileges, backup_approver):
    request_id = submit(agent_api, "payments-db:write").json()["id"]
    body = action_body("USPONSOR1", "custody_approve", str(request_id), action_ts="111.222")
    headers = signed(body)
    for retry in range(3):
        response = Client().post(
            "/slack/interactions",
            body,
            content_type="application/x-www-form-urlencoded",
            HTTP_X_SLACK_RETRY_NUM=str(retry),
            **headers,
        )
        assert response.status_code == 200
    assert Decision.objects.filter(access_request_id=request_id).count() == 1
    assert (
        AuditEvent.objects.filter(
            access_request_id=request_id, verb__startswith="decision."
        ).count()
        == 1
    )
    # The one processed click is told its progress (and nothing leaks into the next test).
    assert slack.wait_for(lambda: slack.of("chat.postEphemeral"))
    assert slack.of("chat.postEphemeral")[0].params["text"] == (
        "Recorded: 1 of 2, waiting for backup."
    )


def test_a_double_click_is_one_decision_and_one_event(
    slack, agent_api, privileges, backup_approver
):
    request_id = submit(agent_api, "payments-db:write").json()["id"]
    click("USPONSOR1", "custody_approve", request_id, action_ts="1.1")
    click("USPONSOR1", "custody_approve", request_id, action_ts="1.2")
    assert Decision.objects.filter(access_request_id=request_id).count() == 1
    assert (
        AuditEvent.objects.filter(
            access_request_id=request_id, verb__startswith="decision."
        ).count()
        == 1
    )
    assert slack.wait_for(lambda: len(slack.of("chat.postEphemeral")) == 2)


def test_an_unknown_slack_user_decides_nothing(slack, agent_api, privileges):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    assert click("UNOBODY00", "custody_approve", request_id).status_code == 200
    assert AccessRequest.objects.get(pk=request_id).status == "pending"
    assert slack.wait_for(lambda: slack.of("chat.postEphemeral"))
    assert "can't approve" in slack.of("chat.postEphemeral")[0].params["text"]
    assert AuditEvent.objects.filter(verb="slack.rejected", data__why="unknown_slack_user").exists()


def test_a_slack_user_without_permission_decides_nothing(slack, agent_api, privileges):
    outsider = UserFactory(username="outsider")
    SponsorProfileFactory(user=outsider, slack_user_id="UOUTSIDE1")
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    click("UOUTSIDE1", "custody_approve", request_id)
    assert AccessRequest.objects.get(pk=request_id).status == "pending"
    assert slack.wait_for(lambda: slack.of("chat.postEphemeral"))
    assert AuditEvent.objects.filter(
        verb="decision.refused", access_request_id=request_id, actor_id="outsider"
    ).exists()


def test_an_edited_button_value_gains_nothing(slack, agent_api, privileges, signer):
    from rest_framework.test import APIClient

    from tests.factories import AgentFactory

    stranger_sponsor = UserFactory(username="stranger")
    other = AgentFactory(spiffe_id="spiffe://example.test/agents/other", sponsor=stranger_sponsor)
    other_api = APIClient()
    other_api.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(other.spiffe_id)}")
    theirs = submit(other_api, "payments-api:refund").json()["id"]
    click("USPONSOR1", "custody_approve", theirs)  # sponsor approves only for invoice-bot
    assert AccessRequest.objects.get(pk=theirs).status == "pending"


def test_rate_limits_are_honoured_with_retry_after(slack, agent_api, privileges):
    slack.fail_next("chat.postMessage", 429, {"Retry-After": "2"})
    submit(agent_api, "payments-api:refund")
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 2, timeout=20)
    limited = slack.of("chat.postMessage", ok_only=False)[0]
    assert limited.status == 429
    retried = [
        c for c in slack.of("chat.postMessage") if c.params["channel"] == limited.params["channel"]
    ][0]
    assert retried.at - limited.at >= 2


def test_a_slack_outage_loses_no_decision_and_messages_follow(
    slack, agent_api, privileges, sponsor
):
    slack.fail_next("chat.postMessage", 500, times=2)
    port = slack.port
    slack.stop()  # Slack is down: connections are refused
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    assert decide(sponsor, request_id).json()["status"] == "approved"
    time.sleep(1.5)
    slack.port = port
    slack.start()
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 2, timeout=30)
    final = json.dumps(slack.of("chat.postMessage")[-1].params["blocks"])
    assert "Approved" in final and "custody_approve" not in final


def test_mentions_links_and_formatting_in_a_justification_are_neutralised(
    slack, agent_api, privileges
):
    hostile = "<!channel> *URGENT* <https://evil.example|click here> & <@U0ADMIN>"
    body = {
        "privilege": "payments-api:refund",
        "task_id": "t-x",
        "duration_seconds": 60,
        "intent": intent(justification=hostile, target="<!here>"),
    }
    agent_api.post("/api/v1/requests", body, format="json")
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 2)
    message = slack.of("chat.postMessage")[0].params
    for text in mrkdwn_texts(message["blocks"]) + [message["text"]]:
        assert "<!" not in text and "<http" not in text and "<@" not in text
    assert hostile in json.dumps(message["blocks"], ensure_ascii=False).replace('\\"', '"')


def test_critical_requests_are_reviewed_in_custody_not_approved_in_slack(
    slack, agent_api, privileges, backup_approver
):
    request_id = submit(agent_api, "prod-cluster:admin", duration=300).json()["id"]
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 3)
    blocks = slack.of("chat.postMessage")[0].params["blocks"]
    actions = [b for b in blocks if b["type"] == "actions"][0]["elements"]
    assert "custody_approve" not in [a["action_id"] for a in actions]
    review = [a for a in actions if a["action_id"] == "custody_review"][0]
    assert review["url"].endswith(f"/requests/{request_id}/")
    assert "fresh login" in json.dumps(blocks)
    click("USPONSOR1", "custody_approve", request_id)  # a forged approve button
    assert not Decision.objects.filter(access_request_id=request_id).exists()
    assert AuditEvent.objects.filter(verb="decision.refused", data__why="above_slack_risk").exists()


def test_the_comment_modal_records_a_decision_with_its_comment(slack, agent_api, privileges):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    click("USPONSOR1", "custody_comment", request_id)
    assert slack.of("views.open")
    view = slack.of("views.open")[0].params["view"]
    submission = {
        "type": "view_submission",
        "api_app_id": "A0CUSTODY",
        "team": {"id": "T0CUSTODY"},
        "user": {"id": "USPONSOR1"},
        "view": {
            "id": "V1",
            "hash": "h1",
            "callback_id": view["callback_id"],
            "private_metadata": view["private_metadata"],
            "state": {
                "values": {
                    "verdict": {"value": {"selected_option": {"value": "deny"}}},
                    "comment": {"value": {"value": "Not in the freeze."}},
                }
            },
        },
    }
    body = urlencode({"payload": json.dumps(submission)})
    response = Client().post(
        "/slack/interactions",
        body,
        content_type="application/x-www-form-urlencoded",
        **signed(body),
    )
    assert response.status_code == 200
    decision = Decision.objects.get(access_request_id=request_id)
    assert (decision.verdict, decision.comment) == ("deny", "Not in the freeze.")


def test_the_custody_command_lists_pending_approvals(slack, agent_api, privileges):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]

    def command(text, user="USPONSOR1", team="T0CUSTODY"):
        body = urlencode(
            {
                "team_id": team,
                "api_app_id": "A0CUSTODY",
                "user_id": user,
                "command": "/custody",
                "text": text,
            }
        )
        return Client().post(
            "/slack/commands",
            body,
            content_type="application/x-www-form-urlencoded",
            **signed(body),
        )

    listed = command("pending").json()["text"]
    assert f"#{request_id} payments-api:refund" in listed
    assert "(0 of 1 — waiting for sponsor; decide by" in listed
    assert "/custody pending" in command("help").json()["text"]
    assert "does not know" in command("pending", user="UNOBODY00").json()["text"]
    assert command("pending", team="T0EVIL").status_code == 403


def test_slack_is_off_and_fails_closed_without_a_signing_secret(settings, agent_api, privileges):
    settings.SLACK_SIGNING_SECRET = None
    body = action_body("USPONSOR1", "custody_approve", "1")
    response = Client().post(
        "/slack/interactions",
        body,
        content_type="application/x-www-form-urlencoded",
        **signed(body),
    )
    assert response.status_code == 401


def test_a_grant_ending_is_shown_on_its_request_messages(slack, agent_api, privileges):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    assert slack.wait_for(lambda: len(slack.of("chat.postMessage")) == 2)
    click("USPONSOR1", "custody_approve", request_id)
    assert slack.wait_for(lambda: len(slack.of("chat.update")) == 2)
    grant = Grant.objects.get(access_request_id=request_id)
    assert agent_api.post(f"/api/v1/grants/{grant.pk}/complete").status_code == 200
    assert slack.wait_for(lambda: len(slack.of("chat.update")) == 4)
    assert "ended" in json.dumps(slack.of("chat.update")[-1].params["blocks"])
    assert "task completed" in json.dumps(slack.of("chat.update")[-1].params["blocks"])


def test_a_button_or_modal_value_that_is_not_a_request_id_is_answered_never_a_500(
    slack, agent_api, privileges
):
    """Slack values are text: "²" passes str.isdigit() but not int(), and a number past bigint
    passes int() but not PostgreSQL. Each is "no such request", told to the person."""
    from hypothesis import example, given
    from hypothesis import strategies as st

    from tests.fuzz import bad_input, integer_like_text

    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    sequence = iter(range(10**6))

    def post(payload):
        body = urlencode({"payload": json.dumps(payload)})
        return Client().post(
            "/slack/interactions",
            body,
            content_type="application/x-www-form-urlencoded",
            **signed(body),
        )

    @bad_input
    @given(value=integer_like_text)
    @example(value="²")
    @example(value="99999999999999999999")
    @example(value="9223372036854775808")
    @example(value="-1")
    def check(value):
        if value == str(request_id):
            return
        for user_id in ("USPONSOR1", "UNOBODY00"):
            for action_id in ("custody_approve", "custody_deny", "custody_comment"):
                body = action_body(user_id, action_id, value, action_ts=f"{next(sequence)}.0")
                response = Client().post(
                    "/slack/interactions",
                    body,
                    content_type="application/x-www-form-urlencoded",
                    **signed(body),
                )
                assert response.status_code == 200, (value, action_id, response.status_code)
        n = next(sequence)
        response = post(
            {
                "type": "view_submission",
                "api_app_id": "A0CUSTODY",
                "team": {"id": "T0CUSTODY"},
                "user": {"id": "USPONSOR1"},
                "view": {
                    "id": f"V{n}",
                    "hash": f"h{n}",
                    "callback_id": "custody_decision",
                    "private_metadata": value,
                    "state": {
                        "values": {"verdict": {"value": {"selected_option": {"value": "deny"}}}}
                    },
                },
            }
        )
        assert response.status_code == 200, (value, response.status_code)
        assert response.json()["response_action"] == "errors"

    check()

    @bad_input
    @given(user_id=st.text(max_size=12))
    @example(user_id="U\x00")
    def from_anyone(user_id):
        body = action_body(
            user_id, "custody_approve", str(request_id), action_ts=f"{next(sequence)}.0"
        )
        response = Client().post(
            "/slack/interactions",
            body,
            content_type="application/x-www-form-urlencoded",
            **signed(body),
        )
        assert response.status_code in (200, 400), (user_id, response.status_code)
        command = urlencode(
            {
                "team_id": "T0CUSTODY",
                "api_app_id": "A0CUSTODY",
                "user_id": user_id,
                "text": "pending",
            }
        )
        response = Client().post(
            "/slack/commands",
            command,
            content_type="application/x-www-form-urlencoded",
            **signed(command),
        )
        assert response.status_code == 200, (user_id, response.status_code)

    from_anyone()
    assert AccessRequest.objects.get(pk=request_id).status == "pending"
    assert not Decision.objects.exists()

    # A comment carrying a NUL byte (which PostgreSQL text cannot hold) is kept without it.
    response = post(
        {
            "type": "view_submission",
            "api_app_id": "A0CUSTODY",
            "team": {"id": "T0CUSTODY"},
            "user": {"id": "USPONSOR1"},
            "view": {
                "id": "V-nul",
                "hash": "h-nul",
                "callback_id": "custody_decision",
                "private_metadata": str(request_id),
                "state": {
                    "values": {
                        "verdict": {"value": {"selected_option": {"value": "deny"}}},
                        "comment": {"value": {"value": "not\x00 now"}},
                    }
                },
            },
        }
    )
    assert response.status_code == 200
    assert Decision.objects.get(access_request_id=request_id).comment == "not now"
