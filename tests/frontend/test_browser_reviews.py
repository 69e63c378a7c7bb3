"""A sponsor's review in a real browser: from the dashboard's reminder to the review page, where
unused eligibility is pre-marked for removal; the sponsor keeps one, removes the other, attests,
and the page shows the review completed."""

import pytest
from playwright.sync_api import expect

from approvals.models import Eligibility, Review
from approvals.services.reviews import review_open
from tests.frontend.test_browser import browser, open_page, screenshot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.eligibility]


def test_a_sponsor_reviews_an_agent_from_the_dashboard(
    open_page,  # noqa: F811 - the fixture imported above
    agent,
    sponsor,
    privileges,
):
    read = Eligibility.objects.create(agent=agent, privilege=privileges["read"], granted_by="t")
    write = Eligibility.objects.create(agent=agent, privilege=privileges["write"], granted_by="t")
    agent.refresh_from_db()
    review = review_open(agent_id=agent.pk, today=agent.review_due)
    page = open_page("sponsor", next_path="/")

    page.locator("#reviews-waiting").get_by_role("link", name="Invoice bot").click()

    expect(page.get_by_role("heading", name="Review of Invoice bot")).to_be_visible()
    read_row, write_row = page.locator(f"#use-{read.pk}"), page.locator(f"#use-{write.pk}")
    expect(write_row.get_by_label("Remove")).to_be_checked()  # unused in the period
    expect(write_row).to_contain_text("never")
    read_row.get_by_label("Keep").check()
    page.get_by_label("Attest: still needed as it is").check()
    page.get_by_label("Comment").fill("Still reconciles invoices.")
    screenshot(page, "review")
    page.get_by_role("button", name="Complete the review").click()

    expect(page.locator("#review-status")).to_have_text("Completed")
    expect(page.locator("#review-result")).to_contain_text("Attest")
    expect(page.locator(f"#use-{write.pk}")).to_contain_text("Remove")
    review.refresh_from_db()
    assert review.status == Review.Status.COMPLETED
    assert list(Eligibility.objects.in_force().filter(agent=agent)) == [read]
