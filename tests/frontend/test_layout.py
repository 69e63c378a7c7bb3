"""The people's pages at a phone's width: every page fits 360 px, the nav collapses, the
pending badge counts, error pages are Custody's own, and a refused htmx action stays in its row.

Driven in Debian's Chromium like test_browser.py (whose fixtures this module shares)."""

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
