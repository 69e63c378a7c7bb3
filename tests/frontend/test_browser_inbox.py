"""The inbox under a noisy agent, in Chromium: many requests, a search, the next page, bulk deny
of a selection and of everything matching."""

import re

import pytest
from playwright.sync_api import expect

from approvals.models import AccessRequest, Decision
from tests.factories import AgentFactory
from tests.frontend.test_browser import browser, open_page, screenshot  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser
PHONE = {"width": 360, "height": 740}  # the narrowest phone the issue names

NOISY = 62
QUIET = 8

# The bulk deny's reason, not the per-row comments (whose label mentions a denial's reason too).
BULK_REASON = "Deny several at once — reason"


def test_a_sponsor_finds_the_noisy_agent_pages_through_and_denies_its_flood(
    open_page,  # noqa: F811
    settings,
    sponsor,
    team,
    agent,
    pending,
    privileges,
):
    settings.CUSTODY_MAX_PENDING_PER_AGENT = 1000
    noisy = AgentFactory(
        spiffe_id="spiffe://example.test/agents/report-bot",
        name="Report bot",
        sponsor=sponsor,
        team=team,
    )
    flood = [
        pending(
            for_agent=noisy,
            task_id="t-42" if n % 2 else "t-43",
            intent={"action": "export", "target": f"report {n}", "justification": "nightly"},
        )
        for n in range(NOISY)
    ]
    quiet = [pending(task_id=f"close-{n}") for n in range(QUIET)]

    page = open_page("sponsor")
    rows = page.locator("tr[id^=request-]")
    expect(page.locator(".inbox-total")).to_contain_text(f"{NOISY + QUIET} waiting for you")
    expect(rows).to_have_count(50)
    groups = page.locator(".inbox-groups")
    expect(groups).to_contain_text(f"Report bot · {NOISY} pending")
    expect(groups).to_contain_text(f"Report bot · task t-42 · {NOISY // 2} pending")
    screenshot(page, "inbox-flood", full_page=False)
    groups.get_by_role("link", name=f"Report bot · task t-43 · {NOISY // 2} pending").click()
    expect(page).to_have_url(re.compile(rf"agent={noisy.pk}&task=t-43"))
    expect(rows).to_have_count(NOISY // 2)
    expect(page.locator("#inbox")).to_contain_text(f"Deny all {NOISY // 2} matching")
    page.go_back()
    expect(rows).to_have_count(50)

    page.get_by_role("link", name="Next 50").click()
    expect(rows).to_have_count(NOISY + QUIET - 50)
    expect(page).to_have_url(re.compile(r"/inbox/\?after="))
    page.get_by_role("link", name="First page").click()
    expect(rows).to_have_count(50)

    page.evaluate("window.custodyNotReloaded = true")
    page.get_by_label("Search").fill("report-bot")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"q=report-bot"))
    expect(page.locator(".inbox-total")).to_contain_text(f"{NOISY} waiting for you match")
    expect(rows).to_have_count(50)
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "inbox-search", full_page=False)

    page.get_by_label(BULK_REASON).fill("A runaway export loop; fixed upstream.")
    page.get_by_role("button", name="Deny selected").click()  # nothing ticked yet
    expect(page.locator("#bulk-message")).to_contain_text("Select at least one request to deny.")
    expect(rows).to_have_count(50)  # only the message changed

    first, second = flood_rows = [rows.nth(0), rows.nth(1)]
    picked = [int(row.get_attribute("id").removeprefix("request-")) for row in flood_rows]
    for row in (first, second):
        row.get_by_role("checkbox").check()
    page.get_by_label(BULK_REASON).fill("A runaway export loop; fixed upstream.")
    page.get_by_role("button", name="Deny selected").click()
    expect(page.locator("#inbox .message.success")).to_contain_text("Denied 2 requests")
    expect(page.locator(".inbox-total")).to_contain_text(f"{NOISY - 2} waiting for you match")
    assert sorted(
        AccessRequest.objects.filter(status="denied").values_list("pk", flat=True)
    ) == sorted(picked)

    page.get_by_label(BULK_REASON).fill("A runaway export loop; fixed upstream.")
    page.get_by_role("button", name=f"Deny all {NOISY - 2} matching").click()
    expect(page.locator("#inbox .message.success")).to_contain_text(f"Denied {NOISY - 2} requests")
    expect(page.locator("#inbox")).to_contain_text("Nothing waiting for you matches this search.")
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "inbox-bulk-denied", full_page=False)
    assert page.evaluate("window.custodyNotReloaded") is True  # all of it swapped by htmx

    assert set(
        AccessRequest.objects.filter(pk__in=[r.pk for r in flood]).values_list("status", flat=True)
    ) == {"denied"}
    assert set(
        AccessRequest.objects.filter(pk__in=[r.pk for r in quiet]).values_list("status", flat=True)
    ) == {"pending"}
    assert set(
        Decision.objects.filter(access_request__agent=noisy).values_list("comment", flat=True)
    ) == {"A runaway export loop; fixed upstream."}

    page.get_by_role("link", name="Clear").click()
    expect(rows).to_have_count(QUIET)

    phone = open_page("sponsor", viewport=PHONE)
    expect(phone.locator(".inbox-total")).to_contain_text(f"{QUIET} waiting for you")
    # Search, filters, groups and the bulk form fit a phone: nothing scrolls sideways.
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(phone, "inbox-phone-search", full_page=False)


def test_the_inbox_search_works_without_javascript(
    browser,  # noqa: F811
    live_server,
    settings,
    sponsor,
    agent,
    pending,
    privileges,
):
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    wanted = pending(task_id="t-find-me")
    pending(task_id="t-other")
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto("/inbox/")
        page.get_by_label("Username").fill("sponsor")
        page.get_by_label("Password").fill("correct horse battery staple")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_label("Search").fill("t-find-me")
        page.get_by_role("button", name="Search").click()
        expect(page).to_have_url(re.compile(r"/inbox/\?q=t-find-me"))
        expect(page.locator("tr[id^=request-]")).to_have_count(1)
        page.locator(f"#request-{wanted.pk}").get_by_role("checkbox").check()
        page.get_by_label(BULK_REASON).fill("Not needed.")
        page.get_by_role("button", name="Deny selected").click()
        expect(page.locator("#messages")).to_contain_text("Denied 1 request")
        expect(page).to_have_url(re.compile(r"/inbox/\?q=t-find-me$"))
    finally:
        context.close()
    assert AccessRequest.objects.get(pk=wanted.pk).status == "denied"
