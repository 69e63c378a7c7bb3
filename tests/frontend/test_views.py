"""The web UI, page by page and action by action, through Django's test client."""

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from guardian.shortcuts import assign_perm

from agents.models import Agent, SponsorProfile
from approvals import services
from approvals.models import AccessRequest, Decision, Grant
from audit.models import AuditEvent, ChainCheck
from audit.services import Actor
from audit.tasks import run_chain_check
from core.sessions import SESSION_KEY
from tests.factories import AccessRequestFactory, AgentFactory, AuditEventFactory, UserFactory
from tests.frontend.conftest import PASSWORD, approve

HTMX = {"HTTP_HX_REQUEST": "true"}


def text(response) -> str:
    return response.content.decode()


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


# --- login, CSRF, CSP --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["/", "/inbox/", "/requests/1/", "/grants/", "/agents/", "/audit/", "/step-up/"]
)
def test_every_page_needs_a_login(db, url):
    response = Client().get(url)

    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={url}"


@pytest.mark.parametrize(
    "url",
    ["/requests/1/decide/", "/grants/1/revoke/", "/agents/1/suspend/", "/agents/1/reactivate/"],
)
def test_every_action_needs_a_login(db, url):
    response = Client().post(url, {"reason": "x", "verdict": "approve"})

    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_an_htmx_request_after_the_session_ended_sends_the_page_to_the_login(db):
    client = Client()

    poll = client.get("/inbox/", HTTP_HX_CURRENT_URL="http://testserver/inbox/", **HTMX)
    decide = client.post(
        "/requests/1/decide/",
        {"verdict": "approve"},
        HTTP_HX_CURRENT_URL="http://testserver/requests/1/",
        **HTMX,
    )

    # A client-side redirect of the whole page, not the login form swapped into the list.
    assert (poll.status_code, poll["HX-Redirect"]) == (200, "/login/?next=/inbox/")
    assert decide["HX-Redirect"] == "/login/?next=/requests/1/"
    assert poll.content == b""


def test_it_logs_in_with_the_password_and_remembers_when(sponsor):
    client = Client()

    page = client.get("/login/")
    response = client.post("/login/", {"username": "sponsor", "password": PASSWORD, "next": "/"})

    assert page.status_code == 200
    assert response.status_code == 302
    assert response["Location"] == "/"
    logged_in_at = datetime.fromisoformat(client.session[SESSION_KEY])
    assert timezone.now() - logged_in_at < timedelta(seconds=30)
    assert client.get("/").status_code == 200


def test_a_wrong_password_does_not_log_in(sponsor):
    client = Client()

    response = client.post("/login/", {"username": "sponsor", "password": "wrong"})

    assert response.status_code == 200
    assert "didn't match" in text(response)
    assert SESSION_KEY not in client.session
    assert client.get("/").status_code == 302


def test_posts_without_the_csrf_token_are_refused(sponsor, pending):
    access_request = pending()
    client = Client(enforce_csrf_checks=True)
    client.force_login(sponsor)

    refused = client.post(f"/requests/{access_request.pk}/decide/", {"verdict": "approve"}, **HTMX)

    assert refused.status_code == 403
    assert not Decision.objects.filter(access_request=access_request).exists()

    client.get("/inbox/")  # sets the CSRF cookie, as the page the person decides on does
    token = client.cookies["csrftoken"].value
    accepted = client.post(
        f"/requests/{access_request.pk}/decide/",
        {"verdict": "approve"},
        HTTP_X_CSRFTOKEN=token,
        **HTMX,
    )

    assert accepted.status_code == 200
    assert Decision.objects.filter(access_request=access_request, approver=sponsor).exists()


def test_the_revoke_and_suspend_forms_need_the_csrf_token(sponsor, agent, granted):
    grant = granted()
    client = Client(enforce_csrf_checks=True)
    client.force_login(sponsor)

    revoke = client.post(f"/grants/{grant.pk}/revoke/", {"reason": "leak"})
    suspend = client.post(f"/agents/{agent.pk}/suspend/", {"reason": "leak"})

    assert (revoke.status_code, suspend.status_code) == (403, 403)
    grant.refresh_from_db()
    agent.refresh_from_db()
    assert grant.revoked_at is None
    assert agent.status == Agent.Status.ACTIVE


@pytest.mark.parametrize("url", ["/", "/inbox/", "/grants/", "/agents/", "/audit/", "/login/"])
def test_pages_carry_a_content_security_policy_without_inline_scripts(web, sponsor, pending, url):
    pending()
    client = web(sponsor) if url != "/login/" else Client()

    response = client.get(url)

    policy = response["Content-Security-Policy"]
    directives = dict(
        (part.split()[0], part.split()[1:]) for part in policy.split(";") if part.strip()
    )
    assert directives["script-src"] == ["'self'"]
    assert "'unsafe-inline'" not in policy
    assert "'unsafe-eval'" not in policy
    assert directives["frame-ancestors"] == ["'none'"]
    html = text(response)
    # Nothing on the page that the policy would block: no inline script, style or handler.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\sstyle=|\son[a-z]+=", html)


def test_the_request_page_carries_the_policy_too(web, sponsor, pending):
    access_request = pending()

    response = web(sponsor).get(f"/requests/{access_request.pk}/")

    assert "script-src 'self'" in response["Content-Security-Policy"]


# --- dashboard ---------------------------------------------------------------------------------


def test_the_dashboard_shows_pending_grants_overdue_reviews_and_denials(
    web, sponsor, agent, team, pending, granted, backup_approver
):
    waiting = pending("payments-db:write")  # two approvals, one received
    approve(backup_approver, waiting)
    grant = granted()
    denied = pending()
    approve(sponsor, denied, verdict="deny")
    overdue = AgentFactory(
        name="Forgotten bot", sponsor=sponsor, team=team, review_due=timezone.localdate()
    )
    Agent.objects.filter(pk=overdue.pk).update(review_due=timezone.localdate() - timedelta(days=3))

    response = web(sponsor).get("/")

    html = text(response)
    assert response.status_code == 200
    assert f'href="/requests/{waiting.pk}/"' in html
    assert "1 of 2 — waiting for sponsor" in html
    assert f"#{grant.pk} payments-api:refund" in html
    assert "Forgotten bot" in html
    assert f'href="/requests/{denied.pk}/"' in html
    assert "denied by sponsor" in html


def test_the_dashboard_shows_an_outsider_nothing(web, outsider, pending, granted):
    granted()
    pending()

    html = text(web(outsider).get("/"))

    assert "Nothing waits for you." in html
    assert "No privilege is in force." in html
    assert "Invoice bot" not in html


# --- inbox -------------------------------------------------------------------------------------


def test_the_inbox_lists_what_the_person_can_decide_soonest_deadline_first(
    web, sponsor, agent, pending, privileges
):
    later = pending()
    sooner = pending("payments-db:write")
    AccessRequest.objects.filter(pk=sooner.pk).update(
        decision_deadline=later.decision_deadline - timedelta(minutes=30)
    )

    response = web(sponsor).get("/inbox/")

    html = text(response)
    assert response.status_code == 200
    assert html.index(f'id="request-{sooner.pk}"') < html.index(f'id="request-{later.pk}"')
    assert '<span class="risk risk-high">high</span>' in html
    assert "0 of 2" in html and "0 of 1" in html
    assert "reconcile" in html  # the intent
    assert "10 min asked" in html
    assert "two distinct approvers" in html  # the policy's reason
    assert 'class="countdown"' in html
    assert 'hx-get="/inbox/"' in html and 'hx-trigger="every 10s"' in html


def test_the_inbox_refreshes_as_a_partial_for_htmx(web, sponsor, pending):
    access_request = pending()

    response = web(sponsor).get("/inbox/", **HTMX)

    html = text(response)
    assert response.status_code == 200
    assert f'id="request-{access_request.pk}"' in html
    assert "<html" not in html and "<h1>" not in html


def test_the_inbox_leaves_out_what_the_person_decided_or_may_not_decide(
    web, sponsor, backup_approver, outsider, teammate, pending
):
    two = pending("payments-db:write")
    approve(backup_approver, two)

    assert f'id="request-{two.pk}"' not in text(web(backup_approver).get("/inbox/"))
    assert f'id="request-{two.pk}"' in text(web(sponsor).get("/inbox/"))
    for person in (outsider, teammate):
        assert "Nothing waits for your decision." in text(web(person).get("/inbox/"))


def test_it_approves_in_place_with_htmx(web, sponsor, pending):
    access_request = pending()

    response = web(sponsor).post(
        f"/requests/{access_request.pk}/decide/",
        {"verdict": "approve", "comment": "for the month-end close"},
        **HTMX,
    )

    html = text(response)
    assert response.status_code == 200
    assert html.startswith(f'<tr id="request-{access_request.pk}">')
    assert "Recorded. Request" in html and "<strong>Approved</strong>" in html
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.APPROVED
    decision = access_request.decisions.get()
    assert (decision.approver, decision.channel, decision.comment) == (
        sponsor,
        Decision.Channel.WEB,
        "for the month-end close",
    )
    assert Grant.objects.filter(access_request=access_request, revoked_at=None).exists()


def test_it_denies_without_htmx_and_lands_on_the_request(web, sponsor, pending):
    access_request = pending()
    client = web(sponsor)

    response = client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "deny", "comment": "not now"}
    )

    assert response.status_code == 302
    assert response["Location"] == f"/requests/{access_request.pk}/"
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.DENIED
    assert not Grant.objects.filter(access_request=access_request).exists()
    page = client.get(response["Location"])
    assert any("is denied" in message for message in messages_of(page))
    assert "not now" in text(page)


def test_a_first_of_two_approvals_reads_as_progress_not_pending(
    web, sponsor, backup_approver, pending
):
    access_request = pending("payments-db:write")

    response = web(sponsor).post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve"}, **HTMX
    )

    assert "Recorded: 1 of 2, waiting for backup." in text(response)
    assert "<strong>Pending</strong>" not in text(response)
    assert "You have already decided this request." in text(response)
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.PENDING


def test_a_decision_that_lost_the_race_says_someone_else_decided_first(
    web, sponsor, backup_approver, pending
):
    access_request = pending()
    client = web(sponsor)
    client.get("/inbox/")  # the sponsor's inbox still shows it ...
    approve(backup_approver, access_request)  # ... when the backup approver decides first

    response = client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "deny", "comment": "not now"}, **HTMX
    )

    html = text(response)
    assert response.status_code == 409
    assert html.startswith(f'<tr id="request-{access_request.pk}">')
    assert "Someone else decided first" in html and "is approved" in html
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.APPROVED
    assert not access_request.decisions.filter(approver=sponsor).exists()


def test_a_lost_race_without_htmx_shows_the_request_and_why(web, sponsor, backup_approver, pending):
    access_request = pending()
    approve(backup_approver, access_request, verdict="deny")
    client = web(sponsor)

    response = client.post(f"/requests/{access_request.pk}/decide/", {"verdict": "approve"})

    assert response.status_code == 302
    page = client.get(response["Location"])
    assert any("Someone else decided first" in message for message in messages_of(page))
    assert not Grant.objects.filter(access_request=access_request).exists()


def test_a_bad_verdict_is_refused_and_nothing_is_recorded(web, sponsor, pending):
    access_request = pending()

    response = web(sponsor).post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "maybe"}, **HTMX
    )

    assert response.status_code == 400
    assert "Choose approve or deny" in text(response)
    assert not access_request.decisions.exists()


def test_a_teammate_who_may_see_but_not_approve_gets_403_and_records_nothing(
    web, teammate, pending
):
    access_request = pending()

    response = web(teammate).post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve"}, **HTMX
    )

    assert response.status_code == 403
    assert "You may not decide requests for this agent." in text(response)
    assert not access_request.decisions.exists()
    assert AuditEvent.objects.filter(
        verb="decision.refused", actor_id="teammate", access_request_id=access_request.pk
    ).exists()


def test_an_outsider_cannot_decide_nor_learn_that_the_request_exists(web, outsider, pending):
    access_request = pending()

    response = web(outsider).post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve"}, **HTMX
    )

    assert response.status_code == 404
    assert not access_request.decisions.exists()


def test_deciding_needs_a_post(web, sponsor, pending):
    access_request = pending()

    assert web(sponsor).get(f"/requests/{access_request.pk}/decide/").status_code == 405


# --- step-up for critical approvals ------------------------------------------------------------


def _age_login(client, minutes: int) -> None:
    session = client.session
    session[SESSION_KEY] = (timezone.now() - timedelta(minutes=minutes)).isoformat()
    session.save()


def test_a_fresh_login_approves_a_critical_request_at_once(web, sponsor, pending):
    access_request = pending("prod-cluster:admin")

    response = web(sponsor).post(
        f"/requests/{access_request.pk}/decide/",
        {"verdict": "approve", "comment": "change 42"},
        **HTMX,
    )

    assert response.status_code == 200
    assert access_request.decisions.filter(approver=sponsor, verdict="approve").exists()


def test_a_stale_login_is_asked_for_the_password_then_the_approval_is_recorded(
    web, sponsor, pending
):
    access_request = pending("prod-cluster:admin")
    client = web(sponsor)
    _age_login(client, minutes=11)

    asked = client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve", "comment": "change 42"}
    )

    assert asked.status_code == 302
    assert asked["Location"] == f"/step-up/?next=/requests/{access_request.pk}/"
    assert not access_request.decisions.exists()

    page = client.get(asked["Location"])
    assert page.status_code == 200
    assert f'request <a href="/requests/{access_request.pk}/">#{access_request.pk}' in text(page)

    wrong = client.post("/step-up/", {"password": "not it", "next": "/inbox/"})
    assert wrong.status_code == 400
    assert "That password is not right." in text(wrong)
    assert not access_request.decisions.exists()

    right = client.post("/step-up/", {"password": PASSWORD, "next": "/inbox/"})

    assert right.status_code == 302
    assert right["Location"] == f"/requests/{access_request.pk}/"
    decision = access_request.decisions.get()
    assert (decision.approver, decision.verdict, decision.channel, decision.comment) == (
        sponsor,
        "approve",
        Decision.Channel.WEB,
        "change 42",
    )
    assert timezone.now() - datetime.fromisoformat(client.session[SESSION_KEY]) < timedelta(
        seconds=30
    )


def test_ten_minutes_after_the_login_the_step_up_is_asked(web, sponsor, pending):
    access_request = pending("prod-cluster:admin")
    start = timezone.now()
    with time_machine.travel(start, tick=True):
        client = web(sponsor)
    with time_machine.travel(start + timedelta(minutes=10, seconds=30), tick=True):
        response = client.post(
            f"/requests/{access_request.pk}/decide/",
            {"verdict": "approve", "comment": "change 42"},
            **HTMX,
        )

    assert response.status_code == 204
    assert response["HX-Redirect"] == f"/step-up/?next=/requests/{access_request.pk}/"
    assert not access_request.decisions.exists()


def test_a_session_without_a_login_time_is_asked_too(web, sponsor, pending):
    access_request = pending("prod-cluster:admin")
    client = web(sponsor)
    session = client.session
    del session[SESSION_KEY]
    session.save()

    response = client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve", "comment": "change 42"}
    )

    assert response["Location"].startswith("/step-up/")
    assert not access_request.decisions.exists()


def test_denying_a_critical_request_needs_no_step_up(web, sponsor, pending):
    access_request = pending("prod-cluster:admin")
    client = web(sponsor)
    _age_login(client, minutes=60)

    response = client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "deny", "comment": "not this week"}
    )

    assert response["Location"] == f"/requests/{access_request.pk}/"
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.DENIED


def test_the_step_up_refuses_a_next_url_elsewhere(web, sponsor):
    client = web(sponsor)

    response = client.post(
        "/step-up/", {"password": PASSWORD, "next": "https://evil.example/phish"}
    )

    assert response.status_code == 302
    assert response["Location"] == "/inbox/"


# --- one request -------------------------------------------------------------------------------


def test_the_request_page_shows_everything_but_the_token(web, sponsor, agent, privileges):
    result = services.access_request_submit(
        agent=agent,
        privilege_name="payments-db:read",
        task_id="task-77",
        duration_seconds=600,
        intent={"action": "read", "target": "ledger 2026-11", "justification": "month-end"},
        context={"ticket": "FIN-1234"},
    )
    access_request, token = result.access_request, result.token.token

    response = web(sponsor).get(f"/requests/{access_request.pk}/")

    html = text(response)
    assert response.status_code == 200
    assert "read on ledger 2026-11" in html and "month-end" in html
    assert "FIN-1234" in html  # the context
    assert "low-risk-short-read-automatic" in html  # the deciding policy
    assert "<td>policy</td><td>approve</td><td>policy</td>" in html  # the decision
    assert "Token claims" in html
    assert '<tr><th scope="row">scope</th><td>payments-db:read</td></tr>' in html
    assert '<tr><th scope="row">task_id</th><td>task-77</td></tr>' in html
    assert "&#x27;" not in html and "{&" not in html  # no Python reprs anywhere
    assert "spiffe://example.test/agents/invoice-bot" in html
    assert token not in html
    assert token.split(".")[1] not in html  # not even the claims segment
    assert "eyJ" not in html
    for verb in ("request.created", "policy.evaluated", "decision.recorded", "grant.issued"):
        family, rest = verb.split(".")
        assert f'<td class="verb"><code>{family}.<wbr>{rest}</code></td>' in html


def test_the_request_page_shows_each_decision_with_channel_and_comment(
    web, sponsor, backup_approver, pending
):
    access_request = pending("payments-db:write")
    approve(backup_approver, access_request, comment="checked the ledger")

    html = text(web(sponsor).get(f"/requests/{access_request.pk}/"))

    assert "<td>backup</td><td>approve</td><td>api</td><td>checked the ledger</td>" in html
    assert 'action="/requests/' in html  # the sponsor may still decide
    assert "2 approvals: policy high-risk-two-approvals asks 2; the privilege asks 1" in html


def test_the_request_page_shows_the_delegation_chain_up_to_the_root(
    web, sponsor, team, agent, backup_approver, pending
):
    root_request = pending()
    root = approve(backup_approver, root_request).grant
    helper = AgentFactory(name="Ledger helper", sponsor=sponsor, team=team)
    delegated = AccessRequestFactory(
        agent=helper,
        privilege_name="payments-api:refund",
        task_id=root.task_id,
        duration_seconds=300,
        parent_grant=root,
    )

    response = web(sponsor).get(f"/requests/{delegated.pk}/")

    html = text(response)
    assert response.status_code == 200
    assert "Chain of custody" in html
    assert "Accountable human at the root: <strong>backup</strong>" in html
    assert f"(grant #{root.pk}" in html
    assert html.index("Invoice bot") < html.index("Ledger helper", html.index("Chain of custody"))


def test_an_outsider_gets_404_for_a_request(web, outsider, pending):
    access_request = pending()

    assert web(outsider).get(f"/requests/{access_request.pk}/").status_code == 404


def test_a_teammate_sees_the_request_without_decide_buttons(web, teammate, pending):
    access_request = pending()

    response = web(teammate).get(f"/requests/{access_request.pk}/")

    assert response.status_code == 200
    assert f'action="/requests/{access_request.pk}/decide/"' not in text(response)


# --- grants ------------------------------------------------------------------------------------


def test_the_grants_page_lists_active_grants_with_time_left_task_and_chain(web, sponsor, granted):
    grant = granted(task_id="task-close-books")

    response = web(sponsor).get("/grants/")

    html = text(response)
    assert response.status_code == 200
    assert f'<tr id="grant-{grant.pk}">' in html
    assert "task-close-books" in html
    assert "<td>root</td>" in html
    assert 'class="countdown"' in html and ">9 min 5" in html
    assert f'href="/grants/{grant.pk}/revoke/"' in html


def test_a_teammate_sees_grants_without_the_revoke_button(web, teammate, granted):
    grant = granted()

    html = text(web(teammate).get("/grants/"))

    assert f'<tr id="grant-{grant.pk}">' in html
    assert f'href="/grants/{grant.pk}/revoke/"' not in html


def test_an_outsider_sees_no_grants(web, outsider, granted):
    grant = granted()

    html = text(web(outsider).get("/grants/"))

    assert f'id="grant-{grant.pk}"' not in html
    assert "No privilege is in force." in html


def test_revoking_asks_for_confirmation_first(web, sponsor, granted):
    grant = granted()

    response = web(sponsor).get(f"/grants/{grant.pk}/revoke/")

    html = text(response)
    assert response.status_code == 200
    assert f"Revoke grant #{grant.pk}" in html
    assert '<textarea name="reason"' in html and 'for="id_reason"' in html
    assert 'aria-describedby="id_reason_helptext"' in html and 'id="id_reason_helptext"' in html
    grant.refresh_from_db()
    assert grant.revoked_at is None


def test_revoking_with_a_reason_ends_the_grant_and_lists_it_under_ended(web, sponsor, granted):
    grant = granted()
    client = web(sponsor)

    response = client.post(f"/grants/{grant.pk}/revoke/", {"reason": "the task was cancelled"})

    assert response.status_code == 302
    assert response["Location"] == "/grants/"
    grant.refresh_from_db()
    assert grant.revoked_at is not None
    assert grant.revoke_reason == Grant.RevokeReason.REVOKED
    assert grant.revoked_by == "sponsor"
    event = AuditEvent.objects.get(verb="grant.revoked", grant_id=grant.pk)
    assert (event.actor_id, event.data["detail"]) == ("sponsor", "the task was cancelled")
    page = client.get("/grants/")
    html = text(page)
    assert any("revoked" in message for message in messages_of(page))
    ended = html[html.index("Ended in the last day") :]
    assert (
        f'<a href="/requests/{grant.access_request_id}/">#{grant.pk}</a> '
        "<code>payments-api:refund</code>" in ended
    )
    # Who ended it and why, in their words.
    assert "Revoked by <strong>sponsor</strong>: “the task was cancelled”" in ended
    assert f'<tr id="grant-{grant.pk}">' not in html


def test_revoking_without_a_reason_is_refused_and_revokes_nothing(web, sponsor, granted):
    grant = granted()

    response = web(sponsor).post(f"/grants/{grant.pk}/revoke/", {"reason": "  "})

    assert response.status_code == 400
    assert "Give a reason" in text(response)
    grant.refresh_from_db()
    assert grant.revoked_at is None


def test_revoking_an_ended_grant_says_so(web, sponsor, granted):
    grant = granted()
    services.grant_revoke(grant=grant, actor=Actor.system("test"), detail="first")
    client = web(sponsor)

    response = client.post(f"/grants/{grant.pk}/revoke/", {"reason": "again"})

    assert response.status_code == 302
    assert any("already ended" in m for m in messages_of(client.get("/grants/")))
    assert AuditEvent.objects.filter(verb="grant.revoked", grant_id=grant.pk).count() == 1


def test_a_teammate_may_not_revoke(web, teammate, granted):
    grant = granted()
    client = web(teammate)

    assert client.get(f"/grants/{grant.pk}/revoke/").status_code == 403
    assert client.post(f"/grants/{grant.pk}/revoke/", {"reason": "mine"}).status_code == 403
    grant.refresh_from_db()
    assert grant.revoked_at is None


def test_an_outsider_gets_404_for_a_grant(web, outsider, granted):
    grant = granted()
    client = web(outsider)

    assert client.get(f"/grants/{grant.pk}/revoke/").status_code == 404
    assert client.post(f"/grants/{grant.pk}/revoke/", {"reason": "mine"}).status_code == 404
    grant.refresh_from_db()
    assert grant.revoked_at is None


# --- agents ------------------------------------------------------------------------------------


def test_the_agents_page_lists_the_inventory(web, sponsor, agent, granted):
    granted()
    granted()
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=timezone.now())

    response = web(sponsor).get("/agents/")

    html = text(response)
    row = html[html.index(f'<tr id="agent-{agent.pk}">') :]
    row = row[: row.index("</tr>")]
    assert response.status_code == 200
    assert "Invoice bot" in row and "spiffe://example.test/agents/invoice-bot" in row
    assert "<td>sponsor</td><td>payments-platform</td>" in row
    assert "status-active" in row
    assert f"{agent.review_due.day} {agent.review_due:%b %Y}" in row  # "29 Nov 2026"
    assert "<time" in row  # last seen
    assert "<td>2</td>" in row  # active grants
    assert f'href="/agents/{agent.pk}/suspend/"' in row


def test_a_teammate_sees_the_agent_without_the_kill_switch(web, teammate, agent):
    html = text(web(teammate).get("/agents/"))

    assert f'<tr id="agent-{agent.pk}">' in html
    assert f"/agents/{agent.pk}/suspend/" not in html


def test_an_outsider_sees_no_agents(web, outsider, agent):
    html = text(web(outsider).get("/agents/"))

    assert "No agents you can see." in html
    assert "Invoice bot" not in html


def test_suspending_an_already_suspended_agent_still_ends_its_live_grants(
    web, sponsor, agent, granted
):
    """A grant that outlived an earlier suspension (as a request in flight once could leave
    one) ends at the next press of the kill switch, with its evidence."""
    grant = granted(task_id="left-behind")
    Agent.objects.filter(pk=agent.pk).update(status=Agent.Status.SUSPENDED)

    response = web(sponsor).post(f"/agents/{agent.pk}/suspend/", {"reason": "again"})

    assert response.status_code == 302
    grant.refresh_from_db()
    assert grant.revoked_at is not None
    assert grant.revoke_reason == Grant.RevokeReason.AGENT_SUSPENDED
    assert AuditEvent.objects.filter(verb="grant.revoked", grant_id=grant.pk).exists()
    assert not AuditEvent.objects.filter(verb="agent.suspended", agent_id=agent.pk).exists()


def test_suspending_asks_for_confirmation_first(web, sponsor, agent):
    response = web(sponsor).get(f"/agents/{agent.pk}/suspend/")

    assert response.status_code == 200
    assert "Suspend Invoice bot" in text(response)
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE


def test_suspending_with_a_reason_ends_every_grant(web, sponsor, agent, granted, pending):
    grants = [granted(), granted(task_id="task-2")]
    waiting = pending()
    client = web(sponsor)

    response = client.post(f"/agents/{agent.pk}/suspend/", {"reason": "prompt injection seen"})

    assert response.status_code == 302
    assert response["Location"] == "/agents/"
    agent.refresh_from_db()
    assert agent.status == Agent.Status.SUSPENDED
    for grant in grants:
        grant.refresh_from_db()
        assert grant.revoked_at is not None
        assert grant.revoke_reason == Grant.RevokeReason.AGENT_SUSPENDED
    waiting.refresh_from_db()
    assert waiting.status == AccessRequest.Status.CANCELLED
    event = AuditEvent.objects.get(verb="agent.suspended", agent_id=agent.pk)
    assert (event.actor_id, event.data["reason"]) == ("sponsor", "prompt injection seen")
    html = text(client.get("/agents/"))
    assert "status-suspended" in html
    assert f'action="/agents/{agent.pk}/reactivate/"' in html


def test_suspending_without_a_reason_is_refused(web, sponsor, agent, granted):
    grant = granted()

    response = web(sponsor).post(f"/agents/{agent.pk}/suspend/", {"reason": ""})

    assert response.status_code == 400
    agent.refresh_from_db()
    grant.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE
    assert grant.revoked_at is None


def test_reactivating_brings_the_agent_back_without_grants(web, sponsor, agent, granted):
    grant = granted()
    client = web(sponsor)
    client.post(f"/agents/{agent.pk}/suspend/", {"reason": "investigating"})

    response = client.post(f"/agents/{agent.pk}/reactivate/")

    assert response.status_code == 302
    agent.refresh_from_db()
    grant.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE
    assert grant.revoked_at is not None
    assert AuditEvent.objects.filter(verb="agent.reactivated", actor_id="sponsor").exists()
    assert client.get(f"/agents/{agent.pk}/reactivate/").status_code == 405


def test_a_teammate_may_not_suspend_or_reactivate(web, teammate, agent):
    client = web(teammate)

    assert client.get(f"/agents/{agent.pk}/suspend/").status_code == 403
    assert client.post(f"/agents/{agent.pk}/suspend/", {"reason": "x"}).status_code == 403
    assert client.post(f"/agents/{agent.pk}/reactivate/").status_code == 403
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE


def test_an_outsider_gets_404_for_an_agent(web, outsider, agent):
    client = web(outsider)

    assert client.get(f"/agents/{agent.pk}/suspend/").status_code == 404
    assert client.post(f"/agents/{agent.pk}/suspend/", {"reason": "x"}).status_code == 404
    assert client.post(f"/agents/{agent.pk}/reactivate/").status_code == 404
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE


# --- audit -------------------------------------------------------------------------------------


@pytest.fixture
def evidence(agent, sponsor, team):
    """Events by two people about two agents, one of which the sponsor cannot see."""
    other = AgentFactory(name="Research bot", sponsor=UserFactory(username="carol"))
    carol = Actor(AuditEvent.ActorType.USER, "carol")
    return {
        "mine": [
            AuditEventFactory(actor=Actor.for_user(sponsor), verb="tool.called", agent_id=agent.pk)
            for _ in range(3)
        ],
        "carols": [AuditEventFactory(actor=carol, verb="tool.called", agent_id=agent.pk)],
        "hidden": [AuditEventFactory(actor=carol, verb="tool.called", agent_id=other.pk)],
        "other": other,
    }


def sequences(html: str) -> set[int]:
    return {int(n) for n in re.findall(r'<tr id="event-(\d+)">', html)}


def test_the_audit_page_shows_only_events_about_agents_the_person_can_see(web, sponsor, evidence):
    html = text(web(sponsor).get("/audit/?verb=tool.called"))

    shown = sequences(html)
    assert {e.sequence for e in evidence["mine"] + evidence["carols"]} == shown
    assert "Research bot" not in html  # not even in the agent filter


def test_an_admin_sees_every_event(web, admin_user, evidence):
    html = text(web(admin_user).get("/audit/?verb=tool.called"))

    assert {e.sequence for e in evidence["hidden"]} <= sequences(html)


def test_the_audit_filters_by_agent_person_verb_and_time(web, admin_user, agent, evidence):
    client = web(admin_user)

    by_agent = sequences(text(client.get(f"/audit/?agent={evidence['other'].pk}")))
    by_person = sequences(text(client.get("/audit/?person=carol")))
    by_verb = sequences(text(client.get("/audit/?verb=agent.registered")))

    hidden = {e.sequence for e in evidence["hidden"]}
    assert hidden <= by_agent and not ({e.sequence for e in evidence["mine"]} & by_agent)
    assert by_person == {e.sequence for e in evidence["carols"] + evidence["hidden"]}
    assert by_verb == set(
        AuditEvent.objects.filter(verb="agent.registered").values_list("sequence", flat=True)
    )


def test_the_audit_filters_by_spiffe_id_grant_and_request(web, admin_user, sponsor, agent):
    other = AgentFactory(name="Research bot", sponsor=UserFactory(username="carol"))
    about_grant = AuditEventFactory(verb="grant.issued", agent_id=agent.pk, grant_id=41)
    about_request = AuditEventFactory(
        verb="request.created", agent_id=agent.pk, access_request_id=42
    )
    elsewhere = AuditEventFactory(verb="tool.called", agent_id=other.pk, grant_id=43)
    client = web(admin_user)

    assert sequences(text(client.get("/audit/?grant=41"))) == {about_grant.sequence}
    assert sequences(text(client.get("/audit/?access_request=42"))) == {about_request.sequence}
    by_spiffe = sequences(text(client.get("/audit/", {"agent": other.spiffe_id})))
    assert elsewhere.sequence in by_spiffe and about_grant.sequence not in by_spiffe
    # Someone who cannot see the agent gets the same answer as for one that does not exist.
    for wanted in (other.spiffe_id, str(other.pk), "spiffe://nowhere/x"):
        response = web(sponsor).get("/audit/", {"agent": wanted})
        assert response.status_code == 400
        assert "No agent you can see has that id or SPIFFE ID." in text(response)
    assert web(admin_user).get("/audit/?grant=0").status_code == 400


def test_the_audit_filters_by_time_range(web, admin_user):
    base = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    moments = [base, base + timedelta(hours=1), base + timedelta(hours=2)]
    events = []
    for moment in moments:
        with time_machine.travel(moment, tick=False):
            events.append(AuditEventFactory(verb="tool.refused"))
    client = web(admin_user)

    middle = sequences(
        text(client.get("/audit/?verb=tool.refused&since=2026-03-02T09:30&until=2026-03-02T10:30"))
    )
    since = sequences(text(client.get("/audit/?verb=tool.refused&since=2026-03-02T10:00")))

    assert middle == {events[1].sequence}
    assert since == {events[1].sequence, events[2].sequence}


def test_a_backwards_time_range_is_a_bad_request(web, admin_user):
    response = web(admin_user).get("/audit/?since=2026-03-02T10:00&until=2026-03-02T09:00")

    assert response.status_code == 400
    assert "must be before" in text(response)


def test_the_audit_pages_back_with_before(web, admin_user):
    made = [AuditEventFactory(verb="introspection.refused") for _ in range(60)]
    client = web(admin_user)

    first = text(client.get("/audit/?verb=introspection.refused"))
    link = re.search(r'href="\?([^"]*before=\d+)"', first).group(1).replace("&amp;", "&")
    second = text(client.get(f"/audit/?{link}"))

    newest = sorted(e.sequence for e in made)
    assert sequences(first) == set(newest[-50:])
    assert "verb=introspection.refused" in link
    assert sequences(second) == set(newest[:10])
    assert "Older events" not in second


def test_the_audit_exports_the_filter_as_csv(web, admin_user, evidence):
    response = web(admin_user).get("/audit/?person=carol&export=csv")

    assert response["Content-Type"].startswith("text/csv")
    assert 'filename="custody-audit.csv"' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [int(row["sequence"]) for row in rows] == sorted(
        e.sequence for e in evidence["carols"] + evidence["hidden"]
    )
    assert {row["actor_id"] for row in rows} == {"carol"}


def test_the_audit_exports_the_filter_as_json_lines(web, sponsor, evidence):
    response = web(sponsor).get("/audit/?verb=tool.called&export=jsonl")

    assert response["Content-Type"] == "application/jsonl"
    lines = b"".join(response.streaming_content).decode().splitlines()
    events = [json.loads(line) for line in lines]
    # The export is as restricted as the page: nothing about the agent the sponsor cannot see.
    assert [e["sequence"] for e in events] == sorted(
        e.sequence for e in evidence["mine"] + evidence["carols"]
    )
    assert all(e["hash"] and e["previous_hash"] for e in events)


def test_the_audit_page_shows_the_chain_verification(
    web, admin_user, sponsor, evidence, django_capture_on_commit_callbacks
):
    client = web(admin_user)
    assert "The chain has not been verified yet." in text(client.get("/audit/"))

    with django_capture_on_commit_callbacks() as enqueued:
        response = client.post("/audit/verify/")

    # The request only starts the walk: a worker runs it, the page polls its progress.
    assert response.status_code == 302
    assert len(enqueued) == 1
    check = ChainCheck.objects.get()
    assert check.state == ChainCheck.State.RUNNING
    page = client.get("/audit/")
    assert any("Verification started" in message for message in messages_of(page))
    assert "Verifying the chain" in text(page)
    status = client.get("/audit/verify/status/")
    assert 'hx-trigger="every 2s"' in status.content.decode()

    run_chain_check(check.pk)  # what the worker does with the task

    html = text(client.get("/audit/"))
    check.refresh_from_db()
    assert check.ok and check.verified == AuditEvent.objects.count()
    assert f"Chain verified: {check.verified} events intact" in html
    assert "Verifying the chain" not in html
    assert "every 2s" not in client.get("/audit/verify/status/").content.decode()
    assert "Verify now" in html
    # Everyone sees the result; only those allowed to read the whole log may run it.
    assert f"Chain verified: {check.verified} events intact" in text(web(sponsor).get("/audit/"))
    assert "Verify now" not in text(web(sponsor).get("/audit/"))
    assert web(sponsor).post("/audit/verify/").status_code == 404
    assert ChainCheck.objects.count() == 1


def test_a_broken_chain_is_shown_as_broken(web, admin_user):
    ChainCheck.objects.create(verified=41, first_bad_sequence=42, problem="hash does not match")

    html = text(web(admin_user).get("/audit/"))

    assert "Chain broken at #42: hash does not match" in html


# --- time zones --------------------------------------------------------------------------------


def test_times_are_shown_in_the_persons_zone_with_utc_on_hover(web, sponsor, pending):
    SponsorProfile.objects.filter(user=sponsor).update(time_zone="Europe/Paris")
    with time_machine.travel(datetime(2026, 1, 15, 9, 30, tzinfo=UTC), tick=True):
        access_request = pending()
        html = text(web(sponsor).get(f"/requests/{access_request.pk}/"))

    assert (
        '<time datetime="2026-01-15T09:30:00' in html
        and 'title="2026-01-15 09:30 UTC">15 Jan 2026, 10:30 CET</time>' in html
    )


def test_times_are_utc_for_a_person_without_a_zone(web, admin_user, pending):
    with time_machine.travel(datetime(2026, 1, 15, 9, 30, tzinfo=UTC), tick=True):
        access_request = pending()
        html = text(web(admin_user).get(f"/requests/{access_request.pk}/"))

    assert 'title="2026-01-15 09:30 UTC">15 Jan 2026, 09:30 UTC</time>' in html


# --- query counts: list pages do not grow with rows ----------------------------------------------


def count_queries(client, url: str, **extra) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, **extra)
    assert response.status_code == 200
    return len(queries)


def _more_agents(sponsor, team, n):
    return [AgentFactory(sponsor=sponsor, team=team) for _ in range(n)]


def test_the_inbox_query_count_does_not_grow_with_rows(web, sponsor, team, agent, pending):
    client = web(sponsor)
    pending()
    client.get("/inbox/")  # warm the per-process caches (content types)
    one = count_queries(client, "/inbox/")
    one_htmx = count_queries(client, "/inbox/", **HTMX)

    for helper in _more_agents(sponsor, team, 3):
        pending(for_agent=helper)
        pending("payments-db:write", for_agent=helper)
    pending("prod-cluster:admin")
    pending("payments-db:write")
    pending(task_id="task-tenth")
    ten = count_queries(client, "/inbox/")

    assert text(client.get("/inbox/")).count('<tr id="request-') == 10
    assert ten == one
    assert count_queries(client, "/inbox/", **HTMX) == one_htmx


def test_the_dashboard_query_count_does_not_grow_with_rows(web, sponsor, team, pending, granted):
    client = web(sponsor)
    pending()
    granted()
    client.get("/")
    one = count_queries(client, "/")

    for helper in _more_agents(sponsor, team, 4):
        pending(for_agent=helper)
        granted(for_agent=helper)
        approve(sponsor, pending(for_agent=helper), verdict="deny")

    assert count_queries(client, "/") == one


def test_the_grants_query_count_does_not_grow_with_rows(
    web, sponsor, team, agent, granted, backup_approver
):
    client = web(sponsor)
    root = granted()
    # One ended already: why it ended is read for the whole list in one query.
    services.grant_revoke(grant=granted(), actor=Actor.system("test"))
    client.get("/grants/")
    one = count_queries(client, "/grants/")

    helpers = _more_agents(sponsor, team, 3)
    for helper in helpers:
        granted(for_agent=helper)
        AccessRequestFactory(  # delegated from the root: the chain column names its holder
            agent=helper,
            privilege_name="payments-api:refund",
            task_id=root.task_id,
            duration_seconds=120,
            parent_grant=root,
        )
    for _ in range(3):
        ended = granted()
        services.grant_revoke(grant=ended, actor=Actor.system("test"))
    ten = count_queries(client, "/grants/")

    html = text(client.get("/grants/"))
    assert html.count('<tr id="grant-') == 7
    assert "delegated from Invoice bot" in html
    assert ten == one


def test_the_agents_query_count_does_not_grow_with_rows(web, sponsor, team, agent, granted):
    client = web(sponsor)
    granted()
    client.get("/agents/")
    one = count_queries(client, "/agents/")

    for helper in _more_agents(sponsor, team, 9):
        granted(for_agent=helper)
    ten = count_queries(client, "/agents/")

    assert text(client.get("/agents/")).count('<tr id="agent-') == 10
    assert ten == one


def test_the_audit_query_count_does_not_grow_with_rows(web, sponsor, agent):
    client = web(sponsor)
    AuditEventFactory(verb="introspection.forbidden", agent_id=agent.pk)
    client.get("/audit/?verb=introspection.forbidden")
    one = count_queries(client, "/audit/?verb=introspection.forbidden")

    for _ in range(9):
        AuditEventFactory(verb="introspection.forbidden", agent_id=agent.pk)
    ten = count_queries(client, "/audit/?verb=introspection.forbidden")

    assert len(sequences(text(client.get("/audit/?verb=introspection.forbidden")))) == 10
    assert ten == one


def test_the_request_page_query_count_does_not_grow_with_decisions_or_events(
    web, sponsor, agent, pending, backup_approver
):
    client = web(sponsor)
    one_approval = pending()
    approve(backup_approver, one_approval)
    two_approvals = pending("payments-db:write")
    for approver in (backup_approver, UserFactory(username="second")):
        assign_perm("agents.approve_for_agent", approver, agent)
        approve(approver, two_approvals)
    client.get(f"/requests/{one_approval.pk}/")

    few = count_queries(client, f"/requests/{one_approval.pk}/")
    more = count_queries(client, f"/requests/{two_approvals.pk}/")

    assert two_approvals.decisions.count() == 2
    assert AuditEvent.objects.filter(access_request_id=two_approvals.pk).count() > (
        AuditEvent.objects.filter(access_request_id=one_approval.pk).count()
    )
    assert more == few
