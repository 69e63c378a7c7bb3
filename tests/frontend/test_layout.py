"""The people's pages at a phone's width: every page fits 360 px, the nav collapses, the
pending badge counts, error pages are Custody's own, and a refused htmx action stays in its row.

Driven in Debian's Chromium like test_browser.py (whose fixtures this module shares)."""

import re

import pytest
from django.urls import path
from playwright.sync_api import expect

from approvals import services
from audit.services import Actor
from config import urls as project_urls
from tests.factories import AccessRequestFactory, AgentFactory, AuditEventFactory, UserFactory
from tests.frontend import test_browser
from tests.frontend.conftest import approve
from tests.frontend.test_browser import DESKTOP, PHONE, screenshot

# The browser and its signed-in pages, shared with test_browser.py.
browser, open_page = test_browser.browser, test_browser.open_page

pytestmark = pytest.mark.browser

LONG_SPIFFE_ID = (
    "spiffe://example.test/ns/payments-production/sa/"
    "invoice-reconciliation-agent-for-the-european-ledger-0f3a9c2d7b41e8"
)
LONG_TASK_ID = (
    "reconcile-2026-11-" + "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
)

# Every element whose right edge passes the viewport, innermost first: the culprit, not the
# table that holds it.
OVERFLOW = """
(limit) => {
  const describe = (el) => {
    const r = el.getBoundingClientRect();
    const id = el.id ? "#" + el.id : "";
    const cls = el.classList.length ? "." + Array.from(el.classList).join(".") : "";
    const text = (el.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 60);
    return `${el.tagName.toLowerCase()}${id}${cls} right=${Math.round(r.right)} "${text}"`;
  };
  const over = (el) => {
    const r = el.getBoundingClientRect();
    return (r.width > 0 || r.height > 0) && r.right > limit + 0.5;
  };
  const all = Array.from(document.body.querySelectorAll("*")).filter(over);
  const clipped = (el) => {  // inside a box that cuts it off (visually hidden text)
    for (; el && el !== document.body; el = el.parentElement) {
      if (["hidden", "clip"].includes(getComputedStyle(el).overflowX)) { return true; }
    }
    return false;
  };
  // A long word sticks out of a box that itself fits: name the box that holds the text.
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    range.selectNodeContents(node);
    const r = range.getBoundingClientRect();
    if ((r.width > 0 || r.height > 0) && r.right > limit + 0.5 && !clipped(node.parentElement)
        && !all.includes(node.parentElement)) {
      all.push(node.parentElement);
    }
  }
  const innermost = all.filter((el) => !all.some((other) => other !== el && el.contains(other)));
  return {
    scrollWidth: document.documentElement.scrollWidth,
    culprits: innermost.slice(0, 12).map(describe),
  };
}
"""


def too_wide(page, width: int) -> list[str]:
    """What passes `width` on this page, named; empty when it fits."""
    found = page.evaluate(OVERFLOW, width)
    problems = list(found["culprits"])
    if found["scrollWidth"] > width:
        problems.append(f"the page scrolls sideways: scrollWidth {found['scrollWidth']}")
    return problems


def boom(request):
    raise RuntimeError("a bug, on purpose")


# The project's URLs plus one view that fails, to see the styled 500 page.
urlpatterns = [path("boom/", boom), *project_urls.urlpatterns]
handler400, handler403 = project_urls.handler400, project_urls.handler403
handler404, handler500 = project_urls.handler404, project_urls.handler500


@pytest.fixture
def every_page(agent, sponsor, team, backup_approver, pending, privileges):
    """One of each page, with the long values real data has: SPIFFE IDs, task ids, hashes."""
    long_agent = AgentFactory(
        spiffe_id=LONG_SPIFFE_ID,
        name="European ledger reconciliation agent",
        sponsor=sponsor,
        team=team,
    )
    waiting = AccessRequestFactory(
        agent=long_agent,
        privilege_name="payments-db:write",
        task_id=LONG_TASK_ID,
        intent={
            "action": "update",
            "target": "ledger rows 2026-11 in eu-west-1/payments-primary-cluster-0001",
            "justification": "Three totals differ from the bank statement by 0.01 EUR; "
            "checksum sha256:" + "ab" * 32,
        },
        context={"environment": "production", "ticket": "FIN-" + "7" * 40},
    )
    pending("prod-cluster:admin", task_id="rotate-certs", duration_seconds=900)
    root = approve(sponsor, pending(task_id=LONG_TASK_ID)).grant
    child = AccessRequestFactory(
        agent=long_agent,
        privilege_name="payments-api:refund",
        task_id=LONG_TASK_ID,
        duration_seconds=120,
        parent_grant=root,
    )  # the same sponsor and team: policy approves the narrower grant at once
    ended = approve(sponsor, pending(task_id="ended-" + "c" * 60)).grant
    services.grant_revoke(grant=ended, actor=Actor.for_user(sponsor), detail="done early")
    AuditEventFactory(
        verb="tool.called",
        agent_id=long_agent.pk,
        data={"tool": "sql", "statement_sha256": "e3b0c44298fc1c149afbf4c8996fb924" * 2},
    )
    teammate = UserFactory(username="teammate")
    teammate.groups.add(team)
    return {
        "login": ("/login/", None),
        "dashboard": ("/", "sponsor"),
        "inbox": ("/inbox/", "sponsor"),
        "request-pending": (f"/requests/{waiting.pk}/", "sponsor"),
        "request-granted": (f"/requests/{root.access_request_id}/", "sponsor"),
        "request-delegated": (f"/requests/{child.pk}/", "sponsor"),
        "grants": ("/grants/", "sponsor"),
        "grant-revoke": (f"/grants/{root.pk}/revoke/", "sponsor"),
        "agents": ("/agents/", "sponsor"),
        "agent": (f"/agents/{long_agent.pk}/", "sponsor"),
        "agent-suspend": (f"/agents/{long_agent.pk}/suspend/", "sponsor"),
        "audit": ("/audit/", "sponsor"),
        "step-up": ("/step-up/", "sponsor"),
        "profile": ("/profile/", "sponsor"),
        "security": ("/account/security/", "sponsor"),
        "totp-activate": ("/accounts/2fa/totp/activate/", "sponsor"),
        "passkey-add": ("/accounts/2fa/webauthn/add/", "sponsor"),
        "password-change": ("/accounts/password/change/", "sponsor"),
        "error-403": (f"/grants/{root.pk}/revoke/", "teammate"),
        "error-404": ("/requests/999999/", "sponsor"),
        "error-500": ("/boom/", "sponsor"),
    }


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_every_page_fits_the_screen_without_sideways_scrolling(
    open_page, settings, every_page, viewport
):
    settings.ROOT_URLCONF = __name__  # the project's URLs and /boom/
    signed_in, problems = {}, {}
    for name, (url, username) in every_page.items():
        if username is None:
            page = open_page(None, viewport=viewport, next_path=url)
        elif username not in signed_in:
            signed_in[username] = page = open_page(username, viewport=viewport, next_path="/")
        else:
            page = signed_in[username]
        page.goto(url)
        expect(page.locator("h1")).to_be_visible()
        if found := too_wide(page, viewport["width"]):
            problems[name] = found
        if viewport is DESKTOP:
            screenshot(page, f"pages/{name}")

    assert problems == {}, f"too wide for {viewport['width']} px: {problems}"


# --- the nav on a phone --------------------------------------------------------------------------


def test_the_nav_collapses_behind_a_menu_button_on_a_phone(open_page, agent, pending, privileges):
    pending(task_id="menu")
    page = open_page("sponsor", viewport=PHONE, next_path="/")
    nav = page.get_by_role("navigation", name="Main")
    menu = page.get_by_role("button", name="Menu")

    expect(menu).to_be_visible()
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(menu).to_have_attribute("aria-controls", "site-nav")
    expect(menu.locator(".badge")).to_have_attribute("data-count", "1")  # shown while closed
    expect(nav).to_be_hidden()
    assert too_wide(page, PHONE["width"]) == []

    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(nav.get_by_role("link", name="Grants")).to_be_visible()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    assert too_wide(page, PHONE["width"]) == []
    screenshot(page, "phone/nav-open", full_page=False, phone=False)

    page.keyboard.press("Escape")
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(nav).to_be_hidden()
    expect(menu).to_be_focused()

    menu.click()
    nav.get_by_role("link", name="Grants").click()
    expect(page).to_have_url(re.compile(r"/grants/$"))
    expect(page.get_by_role("button", name="Menu")).to_have_attribute("aria-expanded", "false")


def test_the_nav_is_a_row_of_links_on_a_wide_screen(open_page, agent, privileges):
    page = open_page("sponsor", viewport=DESKTOP, next_path="/")

    expect(page.get_by_role("button", name="Menu")).to_be_hidden()
    nav = page.get_by_role("navigation", name="Main")
    for name in ("Dashboard", "Inbox", "Grants", "Agents", "Audit"):
        expect(nav.get_by_role("link", name=name)).to_be_visible()


# --- the pending badge ---------------------------------------------------------------------------


def test_the_nav_badge_counts_what_waits_for_me_as_requests_arrive_and_are_decided(
    open_page, agent, pending, privileges
):
    first = pending(task_id="badge-1")
    page = open_page("sponsor")  # the inbox
    badge = page.locator("#nav-pending")
    expect(badge).to_have_attribute("data-count", "1")
    expect(
        page.get_by_role("link", name=re.compile(r"^Inbox ?\(1 waiting for your decision\)$"))
    ).to_be_visible()

    page.clock.install()  # the inbox's ten-second refresh, without waiting ten seconds
    page.reload()
    pending(task_id="badge-2")  # a request arrives while the page is open
    page.clock.run_for(11_000)
    expect(page.locator("tr[id^=request-]")).to_have_count(2)
    expect(badge).to_have_attribute("data-count", "2")

    page.locator(f"#request-{first.pk}").get_by_role("button", name="Approve").click()
    expect(page.locator(f"#request-{first.pk}")).to_contain_text("Approved")
    expect(badge).to_have_attribute("data-count", "1")
    expect(page.locator("#menu-pending")).to_have_attribute("data-count", "1")  # the menu's copy

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Grants").click()
    expect(page.locator("#nav-pending")).to_have_attribute("data-count", "1")


# --- a refused htmx action stays in its row, DEBUG or not ---------------------------------------


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "production"])
def test_a_refused_decision_is_told_in_its_row_and_the_page_stays(
    open_page, settings, agent, pending, privileges, debug
):
    # In DEBUG, django-htmx's debug script replaces the whole page with a 400/403/404/500
    # answer: a refusal must stay in its row all the same.
    settings.DEBUG = debug
    from agents.services import backup_approver_add, backup_approver_remove

    keeper = UserFactory(username="keeper", is_superuser=True)
    teammate = UserFactory(username="teammate")
    teammate.groups.add(agent.team)  # sees the agent's requests whatever happens to the right
    backup_approver_add(agent=agent, user=teammate, by=keeper)
    lost_right, too_long = pending(task_id="lost-right"), pending(task_id="too-long")

    page = open_page("teammate")
    if debug:
        expect(page.locator("script[src*='django-htmx']")).to_have_count(1)
    page.evaluate("window.custodyNotReloaded = true")
    backup_approver_remove(agent=agent, user=teammate, by=keeper)  # while the page is open

    row = page.locator(f"#request-{lost_right.pk}")
    row.get_by_role("button", name="Approve").click()
    expect(row).to_contain_text("You may not decide requests for this agent.")  # 403
    expect(page.locator("h1")).to_have_text("Inbox")
    expect(page.locator(f"#request-{too_long.pk}")).to_be_visible()
    assert page.evaluate("window.custodyNotReloaded") is True

    row = page.locator(f"#request-{too_long.pk}")
    comment = row.get_by_label(re.compile(r"^Comment"))
    comment.evaluate("area => area.removeAttribute('maxlength')")
    comment.fill("x" * 2001)
    row.get_by_role("button", name="Deny").click()
    expect(row).to_contain_text("a comment is at most 2000 characters")  # 400
    expect(page.locator("h1")).to_have_text("Inbox")
    assert page.evaluate("window.custodyNotReloaded") is True
    screenshot(page, f"inbox-refused-{'debug' if debug else 'production'}", full_page=False)
    assert not lost_right.decisions.exists() and not too_long.decisions.exists()


def test_an_htmx_action_on_something_gone_says_so_above_the_page(
    open_page, agent, backup_approver, pending, privileges
):
    from agents.services import backup_approver_remove

    access_request = pending(task_id="vanishes")
    page = open_page("backup")
    page.evaluate("window.custodyNotReloaded = true")
    # No longer a backup approver while the page is open: the request is not theirs to see.
    keeper = UserFactory(username="keeper", is_superuser=True)
    backup_approver_remove(agent=agent, user=backup_approver, by=keeper)

    page.locator(f"#request-{access_request.pk}").get_by_role("button", name="Approve").click()

    expect(page.locator("#messages")).to_contain_text(
        f"There is no request #{access_request.pk} that you can see."
    )
    expect(page.locator("h1")).to_have_text("Inbox")
    assert page.evaluate("window.custodyNotReloaded") is True
    assert not access_request.decisions.exists()


def test_an_htmx_action_that_fails_on_our_side_says_so_and_keeps_the_page(
    open_page, settings, agent, pending, privileges
):
    settings.ROOT_URLCONF = __name__  # the project's URLs and /boom/
    access_request = pending(task_id="still-here")
    page = open_page("sponsor")

    page.evaluate("htmx.ajax('GET', '/boom/', {target: '#inbox', swap: 'innerHTML'})")

    expect(page.get_by_role("alert")).to_have_text(
        "Custody could not do that (error 500); nothing was changed. Reload the page and try again."
    )
    expect(page.locator(f"#request-{access_request.pk}")).to_be_visible()
