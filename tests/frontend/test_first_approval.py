"""README's "Your first approval in two minutes", in Chromium: `make demo-request KIND=two`, then
bob and dave approve with their demo logins and the grant is live. Its screenshots
(first-approval-1.png … 4) are the README's; `make screenshots` refreshes them."""

import io
import re

import pytest
from django.core.management import call_command
from playwright.sync_api import expect

from approvals.demo import DEMO_PASSWORDS
from approvals.models import AccessRequest, Grant, Policy, PolicySetState
from approvals.policy import DEFAULT_POLICY_TEXT
from tests.frontend.test_browser import DESKTOP, browser, screenshot  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser


@pytest.fixture
def demo_world(settings, tmp_path, live_server):
    settings.DEBUG = True  # the development trust domain and load_demo refuse to run without
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev_trust_domain_key.pem"
    # The live server speaks plain HTTP; production's Secure cookies would never come back.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    # A transactional test's flush empties every table, the shipped policy set included.
    Policy.objects.get_or_create(name="default", defaults={"text": DEFAULT_POLICY_TEXT})
    PolicySetState.objects.get_or_create(id=1)
    call_command("load_demo", stdout=io.StringIO())
    return live_server


def sign_in(browser, base_url: str, username: str, next_path: str):  # noqa: F811
    context = browser.new_context(viewport=DESKTOP, base_url=base_url)
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto(next_path)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(DEMO_PASSWORDS[username])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base_url}{next_path}")
    return context, page


def test_your_first_approval_in_two_minutes(browser, demo_world):  # noqa: F811
    out = io.StringIO()
    call_command("demo_request", "--kind", "two", "--url", demo_world.url, stdout=out)
    printed = out.getvalue()
    request_id = int(re.search(r"Request #(\d+) waits for 2 approvals", printed).group(1))
    assert "bob / custody-bob" in printed and "dave / custody-dave" in printed

    bob, page = sign_in(browser, demo_world.url, "bob", "/inbox/")
    row = page.locator(f"#request-{request_id}")
    expect(row).to_contain_text("payments-db:write")
    screenshot(page, "first-approval-1")
    row.get_by_label(re.compile("Comment")).fill("The 3 invoices match the bank statement.")
    row.get_by_role("button", name="Approve").click()
    expect(row).to_contain_text("Recorded")
    screenshot(page, "first-approval-2")
    bob.close()
    assert AccessRequest.objects.get(pk=request_id).approvals_received() == 1

    dave, page = sign_in(browser, demo_world.url, "dave", f"/requests/{request_id}/")
    expect(page.locator("main")).to_contain_text("bob")
    screenshot(page, "first-approval-3")
    page.get_by_label(re.compile("Comment")).fill("Write access for 30 min is fine.")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("main")).to_contain_text(re.compile("approved", re.IGNORECASE))
    grant = Grant.objects.get(access_request_id=request_id)
    assert grant.is_active()
    screenshot(page, "first-approval-4")
    dave.close()

    alice, page = sign_in(browser, demo_world.url, "alice", "/grants/")
    expect(page.locator(f"#grant-{grant.pk}")).to_contain_text("payments-db:write")
    screenshot(page, "first-approval-5")
    alice.close()
