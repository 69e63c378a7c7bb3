"""Drift in Debian's Chromium: an agent records tool calls over HTTP under its grant, some
straying from the intent; its sponsor opens the request page and sees each flag (what, where,
the policy that decided), with no CSP complaint and within a phone's 360 px."""

import json
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.frontend import test_browser, test_layout
from tests.frontend.test_browser import DESKTOP, PHONE, agent_asks, screenshot

browser, open_page = test_browser.browser, test_browser.open_page

pytestmark = pytest.mark.browser


def tool_call(live_server, signer, agent, grant_id, **body) -> dict:
    """The agent reports a tool call over HTTP with its JWT-SVID, as it would in production."""
    request = urllib.request.Request(
        f"{live_server.url}/api/v1/grants/{grant_id}/tool-calls",
        data=json.dumps({"tool": "sql.select", "outcome": "success", **body}).encode(),
        headers={
            "Authorization": f"Bearer {signer.mint(agent.spiffe_id)}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (the live server)
        assert response.status == 201
        return json.loads(response.read())


def test_a_sponsor_sees_a_flagged_grants_drift_on_the_request_page(
    open_page, live_server, signer, agent, privileges
):
    answer = agent_asks(live_server, signer, agent, "payments-db:read", task_id="reconcile-11")
    assert answer["status"] == "approved"
    grant_id = answer["grant"]["id"]
    kept = tool_call(live_server, signer, agent, grant_id, target="invoices 2026-11/inv-3")
    assert kept["drift"] is None
    strayed = tool_call(live_server, signer, agent, grant_id, target="payroll 2026-11")
    assert strayed["drift"]["kinds"] == ["target"]
    wrote = tool_call(
        live_server,
        signer,
        agent,
        grant_id,
        tool="sql.update",
        target="invoices 2026-11",
        action="write",
    )
    assert wrote["drift"]["kinds"] == ["action"]

    page = open_page("sponsor", viewport=DESKTOP, next_path=f"/requests/{answer['id']}/")
    complaints = []
    page.on("console", lambda message: complaints.append(message.text))
    page.reload()
    drift = page.get_by_role("region", name="Drift: 2 tool calls strayed from the intent")
    expect(drift).to_be_visible()
    rows = drift.locator("tr.drift-flag")
    expect(rows).to_have_count(2)
    # Newest first: the write, then the call outside the target.
    expect(rows.nth(0)).to_contain_text("sql.update")
    expect(rows.nth(0)).to_contain_text("Action the privilege does not cover")
    expect(rows.nth(1)).to_contain_text("payroll 2026-11")
    expect(rows.nth(1)).to_contain_text("Target outside the intent")
    for index in range(2):
        expect(rows.nth(index)).to_contain_text("Flagged")
        expect(rows.nth(index)).to_contain_text("drift-flags")
    expect(drift).not_to_contain_text("invoices 2026-11/inv-3")  # the call that kept to it
    expect(page.get_by_role("heading", name=f"Grant #{grant_id}")).to_be_visible()
    expect(page.locator("#grant-h + p")).to_contain_text("Active")
    assert not [text for text in complaints if "Content Security Policy" in text], complaints
    screenshot(page, "pages/request-drift")

    page.set_viewport_size(PHONE)
    expect(drift).to_be_visible()
    assert test_layout.too_wide(page, PHONE["width"]) == []
