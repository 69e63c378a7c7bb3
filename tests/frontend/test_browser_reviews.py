"""A sponsor's review in a real browser: from the dashboard's reminder to the review page, where
eligibility unused in the period is pre-marked for removal (its last use shown even when it was
before the period); the sponsor keeps the used one, removes the others, attests, and the page
shows the review completed; the agent's page then lists it."""

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from approvals.models import Eligibility, Review
from approvals.services.reviews import review_open
from tests.approvals.conftest import submit
from tests.frontend.test_browser import browser, open_page, screenshot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.eligibility]


def test_a_sponsor_reviews_an_agent_from_the_dashboard(
    open_page,  # noqa: F811 - the fixture imported above
    agent,
    agent_api,
    sponsor,
    privileges,
):
    read = Eligibility.objects.create(agent=agent, privilege=privileges["read"], granted_by="t")
    write = Eligibility.objects.create(agent=agent, privilege=privileges["write"], granted_by="t")
    refund = Eligibility.objects.create(agent=agent, privilege=privileges["refund"], granted_by="t")
    # Refund asked for once, before the period (the last review closed after it)...
    assert submit(agent_api, "payments-api:refund", task_id="t-0").status_code == 201
    now = timezone.now()
    Review.objects.create(
        agent=agent,
        period_start=agent.created_at,
        period_end=now,
        due=timezone.localdate(),
        status=Review.Status.COMPLETED,
        closed_at=now,
        reviewer=sponsor,
        verdict=Review.Verdict.ATTEST,
    )
    # ...read used in the period: granted at once, and a tool call under it.
    grant_id = submit(agent_api, "payments-db:read", task_id="t-1").json()["grant"]["id"]
    called = agent_api.post(
        f"/api/v1/grants/{grant_id}/tool-calls",
        {"tool": "sql.select", "target": "ledger", "outcome": "success"},
        format="json",
    )
    assert called.status_code == 201, called.content
    agent.refresh_from_db()
    review = review_open(agent_id=agent.pk, today=agent.review_due)
    page = open_page("sponsor", next_path="/")

    page.locator("#reviews-waiting").get_by_role("link", name="Invoice bot").click()

    expect(page.get_by_role("heading", name="Review of Invoice bot")).to_be_visible()
    read_row, write_row = page.locator(f"#use-{read.pk}"), page.locator(f"#use-{write.pk}")
    refund_row = page.locator(f"#use-{refund.pk}")
    expect(read_row.get_by_label("Keep")).to_be_checked()  # used in the period
    expect(write_row.get_by_label("Remove")).to_be_checked()  # unused in the period
    expect(write_row).to_contain_text("never")
    expect(refund_row.get_by_label("Remove")).to_be_checked()
    expect(refund_row).to_contain_text("(before the period)")
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
    page.get_by_role("link", name="Invoice bot").first.click()
    expect(page.locator(f"#agent-review-{review.pk}")).to_contain_text(
        "Attest: still needed as it is; 2 eligibility removed"
    )
