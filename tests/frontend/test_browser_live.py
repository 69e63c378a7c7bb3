"""Live grants in a real browser: a grant that ends while its page is open leaves "Active now"
(and its Revoke button goes) without a reload, and says who ended it and why."""

import pytest
from playwright.sync_api import expect

from approvals import services
from audit.services import Actor
from tests.frontend.conftest import approve
from tests.frontend.test_browser import browser, open_page, screenshot  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser
# The pages poll every 5 s: wait for up to three polls (a bound on waiting, not a time asserted).
POLL_WAIT = 15_000


def test_a_grant_revoked_elsewhere_leaves_active_now_without_a_reload(
    open_page,  # noqa: F811 - the fixture imported above
    agent,
    sponsor,
    pending,
    privileges,
):
    kept = approve(sponsor, pending(task_id="keep-going")).grant
    ended = approve(sponsor, pending(task_id="stop-now")).grant
    page = open_page("sponsor", next_path="/grants/")
    row = page.locator(f"#grant-{ended.pk}")
    expect(row.get_by_role("link", name="Revoke")).to_be_visible()
    page.evaluate("window.custodyNotReloaded = true")

    # Revoked through the service, as the API, Slack or another tab would.
    services.grant_revoke(
        grant=ended, actor=Actor.for_user(sponsor), detail="The job was cancelled upstream."
    )

    expect(row).to_have_count(0, timeout=POLL_WAIT)  # gone from Active now at the next poll
    expect(page.locator(f"#grant-{kept.pk}")).to_be_visible()
    expect(page.locator(f"#ended-grant-{ended.pk}")).to_contain_text(
        "Revoked by sponsor: “The job was cancelled upstream.”"
    )
    expect(page.locator(f'a[href="/grants/{ended.pk}/revoke/"]')).to_have_count(0)
    assert page.evaluate("window.custodyNotReloaded") is True
    screenshot(page, "grants-live")


def test_the_dashboard_drops_an_ended_grant_without_a_reload(
    open_page,  # noqa: F811
    agent,
    sponsor,
    pending,
    privileges,
):
    grant = approve(sponsor, pending(task_id="dash")).grant
    page = open_page("sponsor", next_path="/")
    item = page.locator(f"#active-grant-{grant.pk}")
    expect(item).to_be_visible()
    page.evaluate("window.custodyNotReloaded = true")

    services.grant_revoke(grant=grant, actor=Actor.for_user(sponsor))

    expect(item).to_have_count(0, timeout=POLL_WAIT)
    expect(page.locator("#active-grants")).to_contain_text("No privilege is in force.")
    assert page.evaluate("window.custodyNotReloaded") is True
