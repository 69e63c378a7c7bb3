"""The web UI in a real browser: Debian's Chromium driven by Playwright against the live server.

Each test saves screenshots under test-results/screenshots/ (desktop, and phone/ at 360 px);
`make screenshots` runs the browser tests with CUSTODY_SCREENSHOTS=docs/screenshots to refresh
the set the README shows."""

import json
import os
import re
import urllib.request
from datetime import timedelta
from importlib import import_module
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from playwright.sync_api import expect, sync_playwright

from agents.models import Agent
from approvals.models import AccessRequest, Decision, Grant
from core.sessions import SESSION_KEY
from tests.factories import AgentFactory
from tests.frontend.conftest import PASSWORD, approve

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / os.environ.get("CUSTODY_SCREENSHOTS", "test-results/screenshots")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}


@pytest.fixture(scope="module")
def browser():
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code between its calls.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def open_page(browser, live_server, settings):
    """A fresh browser context (its own cookies) signed in through the login page (with no
    username: not signed in, at `next_path`)."""
    # The live server speaks plain HTTP; production's Secure cookies would never come back.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    contexts = []

    def sign_in(username, *, viewport=DESKTOP, next_path="/inbox/"):
        context = browser.new_context(viewport=viewport, base_url=live_server.url)
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.goto(next_path)
        if username is None:
            return page
        expect(page).to_have_url(f"{live_server.url}/login/?next={next_path}")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{live_server.url}{next_path}")
        return page

    yield sign_in
    for context in contexts:
        context.close()


def screenshot(page, name: str, *, full_page: bool = True, phone: bool = True) -> None:
    """<name>.png as the page stands and, from a wider viewport, phone/<name>.png of the same
    page at a phone's 360 px (the viewport is put back afterwards)."""
    shot = SCREENSHOTS / f"{name}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=full_page)
    viewport = page.viewport_size
    if not phone or viewport is None or viewport["width"] <= PHONE["width"]:
        return
    twin = SCREENSHOTS / "phone" / f"{name}.png"
    twin.parent.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(PHONE)
    try:
        page.screenshot(path=str(twin), full_page=full_page)
    finally:
        page.set_viewport_size(viewport)


def agent_asks(live_server, signer, agent, privilege, *, task_id, duration=600, **intent) -> dict:
    """The agent asks over HTTP with its JWT-SVID, as it would in production."""
    body = {
        "privilege": privilege,
        "task_id": task_id,
        "duration_seconds": duration,
        "intent": {
            "action": intent.get("action", "reconcile invoices"),
            "target": intent.get("target", "invoices 2026-11"),
            "justification": intent.get("justification", "3 invoices do not match the ledger."),
        },
    }
    request = urllib.request.Request(
        f"{live_server.url}/api/v1/requests",
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {signer.mint(agent.spiffe_id)}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (the live server)
        assert response.status == 201
        return json.loads(response.read())


def request_id(answer: dict) -> int:
    return int(answer["id"])


def test_a_sponsor_approves_an_agents_request_in_the_inbox_and_sees_the_grant(
    open_page, live_server, signer, agent, privileges
):
    refund = agent_asks(
        live_server,
        signer,
        agent,
        "payments-api:refund",
        task_id="refund-7731",
        action="refund",
        target="invoice 7731",
        justification="The customer was charged twice.",
    )
    agent_asks(live_server, signer, agent, "payments-db:write", task_id="close-books")
    agent_asks(
        live_server,
        signer,
        agent,
        "prod-cluster:admin",
        task_id="rotate-certs",
        duration=900,
        action="rotate",
        target="ingress certificates",
        justification="They expire in two days.",
    )
    refund_id = request_id(refund)
    assert AccessRequest.objects.get(pk=refund_id).status == AccessRequest.Status.PENDING

    page = open_page("sponsor")
    row = page.locator(f"#request-{refund_id}")
    expect(row).to_contain_text("payments-api:refund")
    expect(row).to_contain_text("refund on invoice 7731")
    expect(row).to_contain_text("0 of 1")
    expect(page.locator("tr[id^=request-]")).to_have_count(3)
    screenshot(page, "inbox")

    page.evaluate("window.custodyNotReloaded = true")
    row.get_by_label("Comment").fill("Refund confirmed with finance.")
    row.get_by_role("button", name="Approve").click()

    expect(row).to_contain_text("Approved")
    expect(row).to_contain_text("Recorded.")
    assert page.evaluate("window.custodyNotReloaded") is True  # swapped in place by htmx
    grant = Grant.objects.get(access_request_id=refund_id)
    assert grant.is_active()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Grants").click()
    grant_row = page.locator(f"#grant-{grant.pk}")
    expect(grant_row).to_contain_text("payments-api:refund")
    expect(grant_row).to_contain_text("refund-7731")
    expect(grant_row.locator(".countdown")).to_have_text(re.compile(r"^\d+ min( \d+ s)?$"))
    screenshot(page, "grants")


def test_a_two_approval_request_needs_a_second_person(
    open_page, live_server, signer, agent, backup_approver, privileges
):
    answer = agent_asks(
        live_server,
        signer,
        agent,
        "payments-db:write",
        task_id="fix-ledger",
        action="update",
        target="ledger rows 2026-11",
        justification="Correct 3 mismatched totals.",
    )
    pk = request_id(answer)

    first = open_page("sponsor")
    row = first.locator(f"#request-{pk}")
    expect(row).to_contain_text("0 of 2")
    expect(row.locator(".risk-high")).to_have_text("high")
    row.get_by_role("button", name="Approve").click()
    expect(row).to_contain_text("Recorded: 1 of 2, waiting for backup.")  # progress, ...
    expect(row).not_to_contain_text("Pending")  # ... not "pending"
    expect(row).to_contain_text("You have already decided this request.")
    assert AccessRequest.objects.get(pk=pk).status == AccessRequest.Status.PENDING

    second = open_page("backup")  # another person, another browser context
    row = second.locator(f"#request-{pk}")
    expect(row).to_contain_text("1 of 2")
    row.get_by_label("Comment").fill("Second pair of eyes: fine.")
    row.get_by_role("button", name="Approve").click()
    expect(row).to_contain_text(f"Recorded. Request #{pk} is approved.")
    assert AccessRequest.objects.get(pk=pk).status == AccessRequest.Status.APPROVED

    second.get_by_role("link", name=f"#{pk} payments-db:write").click()
    expect(second.locator("h1")).to_contain_text(f"Request #{pk}")
    decisions = second.locator('section[aria-labelledby="decisions-h"]')
    expect(
        decisions.get_by_role("cell", name="Second pair of eyes: fine.", exact=True)
    ).to_be_visible()
    expect(second.locator("#trail-h")).to_be_visible()
    screenshot(second, "request")


def test_revoking_from_the_grants_page_asks_for_a_reason_and_ends_the_grant(
    open_page, agent, sponsor, pending, privileges
):
    grant = approve(sponsor, pending(task_id="export-q3")).grant

    page = open_page("sponsor", next_path="/grants/")
    page.locator(f"#grant-{grant.pk}").get_by_role("link", name="Revoke").click()
    expect(page.locator("h1")).to_have_text(f"Revoke grant #{grant.pk}")
    page.get_by_label("Reason").fill("The export finished early; nothing else needs it.")
    screenshot(page, "revoke-confirm")
    page.get_by_role("button", name="Revoke grant").click()

    expect(page).to_have_url(re.compile(r"/grants/$"))
    expect(page.locator(f"#grant-{grant.pk}")).to_have_count(0)
    ended = page.locator("table").nth(1)
    expect(ended).to_contain_text(f"#{grant.pk} payments-api:refund")
    expect(ended).to_contain_text(
        "Revoked by sponsor: “The export finished early; nothing else needs it.”"
    )
    grant.refresh_from_db()
    assert grant.revoke_reason == Grant.RevokeReason.REVOKED
    screenshot(page, "grants-revoked")


def test_suspending_an_agent_ends_its_grants(open_page, agent, sponsor, team, pending, privileges):
    grants = [approve(sponsor, pending(task_id=f"batch-{n}")).grant for n in range(2)]
    AgentFactory(name="Research bot", sponsor=sponsor, team=team)
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=timezone.now())

    page = open_page("sponsor", next_path="/agents/")
    row = page.locator(f"#agent-{agent.pk}")
    expect(row.locator("td").nth(6)).to_have_text("2")
    row.get_by_role("link", name="Suspend").click()
    expect(page.locator("h1")).to_have_text("Suspend Invoice bot")
    page.get_by_label("Reason").fill("Unexpected refunds outside its task.")
    page.get_by_role("button", name="Suspend agent").click()

    row = page.locator(f"#agent-{agent.pk}")
    expect(row).to_contain_text("Suspended")
    expect(row.locator("td").nth(6)).to_have_text("0")
    expect(row.get_by_role("button", name="Reactivate")).to_be_visible()
    screenshot(page, "agents-suspended")
    for grant in grants:
        grant.refresh_from_db()
        assert grant.revoke_reason == Grant.RevokeReason.AGENT_SUSPENDED

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Grants").click()
    ended = page.locator("table").nth(1)
    for grant in grants:
        expect(ended).to_contain_text(f"#{grant.pk} payments-api:refund")
    expect(ended.get_by_role("cell", name=re.compile("^Agent suspended by"))).to_have_count(2)


def test_the_inbox_works_with_the_keyboard_alone(open_page, agent, pending, privileges):
    access_request = pending(task_id="keyboard")

    page = open_page("sponsor")
    approve_button = page.locator(f"#request-{access_request.pk}").get_by_role(
        "button", name="Approve"
    )
    for _ in range(30):
        page.keyboard.press("Tab")
        if approve_button.evaluate("button => button === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the Approve button")
    screenshot(page, "inbox-keyboard", full_page=False)  # the focus ring on Approve
    page.keyboard.press("Enter")

    expect(page.locator(f"#request-{access_request.pk}")).to_contain_text("Approved")
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.APPROVED


def test_the_inbox_fits_a_phone(open_page, agent, pending, privileges):
    for privilege in ("payments-api:refund", "payments-db:write"):
        pending(privilege, task_id=f"phone-{privilege}")

    page = open_page("sponsor", viewport=PHONE)

    expect(page.locator("tr[id^=request-]")).to_have_count(2)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # nothing scrolls sideways
    screenshot(page, "inbox-phone")


def test_a_decision_that_lost_the_race_says_so_in_its_row(
    open_page, agent, pending, backup_approver, privileges
):
    access_request = pending(task_id="race")
    page = open_page("sponsor")
    row = page.locator(f"#request-{access_request.pk}")
    expect(row).to_contain_text("0 of 1")

    approve(backup_approver, access_request)  # in Slack, say, while the page is open
    row.get_by_label("Comment").fill("Not this week.")
    row.get_by_role("button", name="Deny").click()

    expect(row).to_contain_text("Someone else decided first")
    expect(row).to_contain_text("Approved")
    screenshot(page, "inbox-race", full_page=False)
    assert not access_request.decisions.filter(verdict="deny").exists()


def test_a_denial_without_a_reason_is_refused_in_its_row_and_the_reason_then_denies(
    open_page, agent, pending, backup_approver, privileges
):
    access_request = pending(task_id="no-reason")
    other = pending(task_id="bystander")
    page = open_page("sponsor")
    row = page.locator(f"#request-{access_request.pk}")

    row.get_by_role("button", name="Deny").click()

    expect(row).to_contain_text("Give a reason for denying")
    expect(page.locator(f"#request-{other.pk}")).to_be_visible()  # the page is whole
    expect(page.locator("h1")).to_have_text("Inbox")
    screenshot(page, "inbox-deny-needs-reason", full_page=False)
    assert not access_request.decisions.exists()
    row.get_by_label("Comment").fill("Refunds wait for the audit.")
    row.get_by_role("button", name="Deny").click()
    expect(row).to_contain_text("Denied")
    assert access_request.decisions.get().comment == "Refunds wait for the audit."


def test_a_critical_approval_asks_for_the_password_then_records_the_decision(
    open_page, agent, sponsor, pending, privileges
):
    access_request = pending("prod-cluster:admin", task_id="rotate-certs", duration_seconds=900)
    page = open_page("sponsor")
    # The sign-in was eleven minutes ago.
    cookie = next(c for c in page.context.cookies() if c["name"] == "sessionid")
    session = import_module(django_settings.SESSION_ENGINE).SessionStore(cookie["value"])
    session[SESSION_KEY] = (timezone.now() - timedelta(minutes=11)).isoformat()
    session.save()

    row = page.locator(f"#request-{access_request.pk}")
    row.get_by_label("Comment").fill("Change CHG-2231.")
    row.get_by_role("button", name="Approve").click()

    expect(page).to_have_url(re.compile(rf"/step-up/\?next=/requests/{access_request.pk}/$"))
    expect(page.locator("main")).to_contain_text(f"#{access_request.pk} prod-cluster:admin")
    assert not access_request.decisions.exists()
    page.get_by_label("Password for sponsor").fill("not my password")
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("alert")).to_have_text("That password is not right.")
    page.get_by_label("Password for sponsor").fill(PASSWORD)
    screenshot(page, "step-up", full_page=False)
    page.get_by_role("button", name="Confirm").click()

    expect(page).to_have_url(re.compile(rf"/requests/{access_request.pk}/$"))
    expect(page.locator("#messages")).to_contain_text("Recorded: 1 of 2")
    decision = access_request.decisions.get()
    assert (decision.approver, decision.channel, decision.comment) == (
        sponsor,
        Decision.Channel.WEB,
        "Change CHG-2231.",
    )


def test_the_inbox_refreshes_itself_but_not_under_a_half_written_comment(
    open_page, agent, pending, privileges
):
    first = pending(task_id="first")
    page = open_page("sponsor")
    page.clock.install()  # the ten-second refresh, without waiting ten seconds
    page.reload()
    expect(page.locator("tr[id^=request-]")).to_have_count(1)

    second = pending(task_id="second")
    page.clock.run_for(11_000)
    expect(page.locator(f"#request-{second.pk}")).to_be_visible()

    comment = page.locator(f"#request-{first.pk}").get_by_label("Comment")
    comment.fill("Checked with the finance team, but")
    page.locator("h1").click()  # attention elsewhere; the words stay in the box
    third = pending(task_id="third")
    page.clock.run_for(11_000)
    page.wait_for_timeout(750)

    expect(page.locator(f"#request-{third.pk}")).to_have_count(0)
    expect(comment).to_have_value("Checked with the finance team, but")
    screenshot(page, "inbox-refresh", full_page=False)


# --- the API docs and the admin under the CSP --------------------------------------------------


def test_the_api_docs_and_the_admin_run_under_the_csp_from_this_server_only(
    browser, live_server, settings, admin_user
):
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    context = browser.new_context(viewport=DESKTOP, base_url=live_server.url)
    context.set_default_timeout(10_000)
    page = context.new_page()
    violations, elsewhere = [], []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    page.on(
        "request",
        lambda request: (
            elsewhere.append(request.url)
            if not request.url.startswith((live_server.url, "data:"))
            else None
        ),
    )
    try:
        page.goto("/api/docs/")
        # Swagger UI rendered the operations list from our own schema.
        expect(page.locator(".opblock").first).to_be_visible()
        expect(
            page.locator(".opblock-summary-path", has_text="/api/v1/requests").first
        ).to_be_visible()
        screenshot(page, "api-docs", full_page=False)

        page.goto("/admin/")  # the admin signs in on the one sign-in page (second factor too)
        page.get_by_label("Username").fill(admin_user.username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{live_server.url}/admin/")
        page.goto("/admin/auth/user/")
        expect(page.locator("#result_list")).to_be_visible()
        page.goto(f"/admin/auth/user/{admin_user.pk}/change/")
        expect(page.locator("#user_form")).to_be_visible()
        page.wait_for_load_state("networkidle")
    finally:
        context.close()

    assert violations == []
    assert elsewhere == []
