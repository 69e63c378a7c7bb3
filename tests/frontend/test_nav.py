"""The page frame through HTTP: the nav's pending badge counts what the person can decide now."""

import re

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tests.frontend.conftest import approve

HTMX = {"HTTP_HX_REQUEST": "true"}


def badge_count(html: str, badge_id: str = "nav-pending") -> int:
    found = re.search(rf'id="{badge_id}" data-count="(\d+)"', html)
    assert found, f"no #{badge_id} badge"
    return int(found.group(1))


def test_the_badge_counts_requests_as_they_arrive_and_are_decided(
    web, sponsor, backup_approver, pending
):
    client = web(sponsor)
    assert badge_count(client.get("/grants/").content.decode()) == 0

    first, second = pending(task_id="one"), pending(task_id="two")
    html = client.get("/grants/").content.decode()
    assert badge_count(html) == badge_count(html, "menu-pending") == 2
    assert "(2 waiting for your decision)" in html

    approve(sponsor, first)  # decided by this person: no longer waits for them
    approve(backup_approver, second)  # decided by someone else: no longer pending at all
    assert badge_count(client.get("/").content.decode()) == 0


def test_the_badge_fragment_refreshes_both_copies(web, sponsor, pending):
    pending()

    response = web(sponsor).get("/nav/pending/", **HTMX)

    html = response.content.decode()
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert badge_count(html) == 1
    assert re.search(r'id="menu-pending" data-count="1"[^>]*hx-swap-oob="true"', html)
    assert "<html" not in html


def test_the_badge_is_only_for_people_signed_in(db, sponsor, pending):
    pending()

    assert Client().get("/nav/pending/").status_code == 302
    assert "nav-pending" not in Client().get("/login/").content.decode()


def test_the_badge_costs_nothing_on_fragments_and_one_count_on_pages(web, sponsor, pending):
    pending()
    client = web(sponsor)
    client.get("/inbox/")  # warm the per-process caches (content types)

    with CaptureQueriesContext(connection) as partial:
        client.get("/inbox/", **HTMX)
    with CaptureQueriesContext(connection) as page:
        client.get("/grants/")

    counts = [q["sql"] for q in page.captured_queries if "COUNT(" in q["sql"].upper()]
    assert "nav-pending" not in client.get("/inbox/", **HTMX).content.decode()
    assert not [q for q in partial.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1


def test_the_nav_marks_the_page_the_person_is_on(web, sponsor):
    client = web(sponsor)

    grants = client.get("/grants/").content.decode()
    agents = client.get("/agents/").content.decode()

    assert re.findall(r'<a href="([^"]+)" aria-current="page">', grants) == ["/grants/"]
    assert re.findall(r'<a href="([^"]+)" aria-current="page">', agents) == ["/agents/"]
