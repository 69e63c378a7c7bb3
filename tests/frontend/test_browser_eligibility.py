"""Eligibility in a real browser: the sponsor makes the agent eligible on its page, changes the
limits in place and removes it; and decides, from the inbox, the agent's own request (made over
HTTP with its JWT-SVID) to become eligible."""

import json
import urllib.request

import pytest
from playwright.sync_api import expect

from approvals.models import Eligibility, EligibilityRequest
from audit.models import AuditEvent
from tests.frontend.test_browser import browser, open_page, screenshot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.eligibility]


def test_a_sponsor_grants_changes_and_removes_eligibility_on_the_agents_page(
    open_page,  # noqa: F811 - the fixture imported above
    agent,
    sponsor,
    privileges,
):
    page = open_page("sponsor", next_path=f"/agents/{agent.pk}/")
    section = page.locator("#eligibility-form")
    section.get_by_label("Privilege").select_option(label=str(privileges["read"]))
    section.get_by_label("At most (minutes)").fill("15")
    section.get_by_role("button", name="Make eligible").click()

    expect(page.get_by_role("status").first).to_contain_text(
        "Invoice bot is now eligible for payments-db:read."
    )
    eligibility = Eligibility.objects.get(agent=agent)
    row = page.locator(f"#eligibility-{eligibility.pk}")
    expect(row.locator(".eligibility-limits")).to_contain_text("at most 15 min")

    row.get_by_text("Change limits").click()
    row.get_by_label("At most (minutes)").fill("30")
    row.get_by_label("Environment").fill("staging")
    screenshot(page, "eligibility-limits")
    row.get_by_role("button", name="Save limits").click()

    row = page.locator(f"#eligibility-{eligibility.pk}")
    expect(row.locator(".eligibility-limits")).to_contain_text("at most 30 min, staging only")
    expect(row.locator(".eligibility-limits")).to_contain_text("by sponsor")
    eligibility.refresh_from_db()
    assert (eligibility.max_duration_seconds, eligibility.environment) == (1800, "staging")

    row.get_by_role("button", name="Remove").click()

    expect(page.locator("#eligibility")).to_contain_text("Not eligible for anything")
    expect(page.get_by_text("History (1)")).to_be_visible()
    assert not Eligibility.objects.in_force().filter(agent=agent).exists()
    assert list(
        AuditEvent.objects.filter(verb__startswith="eligibility.").values_list("verb", flat=True)
    ) == ["eligibility.granted", "eligibility.updated", "eligibility.removed"]


def agent_asks_to_be_eligible(live_server, signer, agent, privilege: str) -> int:
    request = urllib.request.Request(
        f"{live_server.url}/api/v1/eligibility/requests",
        data=json.dumps(
            {
                "privilege": privilege,
                "justification": "Month-end corrections need it.",
                "max_duration_seconds": 900,
            }
        ).encode(),
        headers={
            "Authorization": f"Bearer {signer.mint(agent.spiffe_id)}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (the live server)
        assert response.status == 201
        return int(json.loads(response.read())["id"])


def test_a_sponsor_decides_an_agents_eligibility_request_from_the_inbox(
    open_page,  # noqa: F811 - the fixture imported above
    live_server,
    signer,
    agent,
    sponsor,
    privileges,
):
    write = agent_asks_to_be_eligible(live_server, signer, agent, "payments-db:write")
    refund = agent_asks_to_be_eligible(live_server, signer, agent, "payments-api:refund")
    page = open_page("sponsor", next_path="/inbox/")

    expect(page.locator("#eligibility-pending")).to_contain_text(
        "Agents asking to become eligible (2)"
    )
    asked = page.locator(f"#inbox-eligibility-{write}")
    expect(asked).to_contain_text("Month-end corrections need it.")
    expect(asked).to_contain_text("at most 15 min")
    screenshot(page, "inbox-eligibility")
    asked.get_by_label("Comment").fill("for month end")
    asked.get_by_role("button", name="Approve").click()

    expect(page.get_by_role("status").first).to_contain_text(
        f"Eligibility request #{write} (payments-db:write for Invoice bot) is approved."
    )
    expect(page.locator(f"#inbox-eligibility-{write}")).to_have_count(0)
    page.locator(f"#inbox-eligibility-{refund}").get_by_role("button", name="Deny").click()

    expect(page.get_by_role("status").first).to_contain_text("is denied.")
    expect(page.locator("#eligibility-pending")).to_have_count(0)
    assert dict(EligibilityRequest.objects.values_list("pk", "status")) == {
        write: "approved",
        refund: "denied",
    }
    eligibility = Eligibility.objects.in_force().get(agent=agent)
    assert (eligibility.privilege.name, eligibility.max_duration_seconds) == (
        "payments-db:write",
        900,
    )
