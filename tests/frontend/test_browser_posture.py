"""The posture page in Debian's Chromium: a security analyst signs in, sees the charts drawn
(no CSP complaint: no inline style, no script), follows the figures to their lists, and the
page fits a phone's 360 px."""

import re

import pytest
from playwright.sync_api import expect

from tests.frontend import test_browser, test_layout, test_posture
from tests.frontend.test_browser import DESKTOP, PHONE, screenshot

browser, open_page = test_browser.browser, test_browser.open_page
estate, security_analyst = test_posture.estate, test_posture.security_analyst

pytestmark = pytest.mark.browser


def test_the_security_team_reads_the_posture_and_follows_its_figures(
    open_page, live_server, estate, security_analyst
):
    page = open_page("analyst", viewport=DESKTOP, next_path="/posture/")
    complaints = []
    page.on("console", lambda message: complaints.append(message.text))
    page.reload()
    expect(page.get_by_role("heading", name="Posture", level=1)).to_be_visible()
    expect(
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Posture")
    ).to_be_visible()
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(5)
    for index in range(5):
        box = charts.nth(index).bounding_box()
        assert box and box["width"] > 200, f"chart {index} not drawn: {box}"
    # A bar is drawn to scale: the three active agents' bar is three times the suspended one's.
    active = page.locator("#posture-agents rect.bar-active").bounding_box()
    suspended = page.locator("#posture-agents rect.bar-suspended").bounding_box()
    assert active["width"] == pytest.approx(3 * suspended["width"], rel=0.02)
    expect(page.locator("#posture-grants rect.bar-risk-low")).to_have_count(1)
    assert not [text for text in complaints if "Content Security Policy" in text], complaints
    screenshot(page, "pages/posture")

    page.get_by_role("link", name="Suspended: 1", exact=True).click()
    expect(page).to_have_url(re.compile(r"/agents/\?status=suspended$"))
    expect(page.get_by_role("link", name="Paused bot")).to_be_visible()
    expect(page.get_by_role("link", name="Invoice bot")).to_have_count(0)

    page.go_back()
    # The bar itself is a link too: the orphaned bar leads to the orphans.
    page.locator("#posture-flags a.chart-link").first.click()
    expect(page).to_have_url(re.compile(r"/agents/\?flag=orphaned$"))
    expect(page.get_by_role("link", name="Orphan bot")).to_be_visible()
    expect(page.get_by_text("Showing agents that are orphaned.")).to_be_visible()

    page.go_back()
    page.get_by_role("link", name="Low risk: 1", exact=True).click()
    expect(page).to_have_url(re.compile(r"/grants/\?risk=low$"))
    expect(page.get_by_text("Showing low-risk grants only.")).to_be_visible()

    page.go_back()
    page.locator("#posture-requesters").get_by_role(
        "link", name="Invoice bot: 3", exact=True
    ).click()
    expect(page).to_have_url(re.compile(r"/agents/\d+/$"))
    expect(page.get_by_role("heading", name="Invoice bot", level=1)).to_be_visible()


def test_the_posture_page_fits_a_phone(open_page, estate, security_analyst):
    page = open_page("analyst", viewport=PHONE, next_path="/posture/")
    expect(page.locator("svg.chart").first).to_be_visible()
    assert test_layout.too_wide(page, PHONE["width"]) == []
