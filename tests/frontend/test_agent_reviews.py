"""An agent's page links its reviews over HTTP: the open one prominently (due or overdue, linked
for its sponsor and admins, "waiting for its sponsor" for anyone else who may see the agent),
and the ones before it with their result, reviewer and date; the review list pages a big
campaign; neither page's query count grows with the number of reviews."""

import re
from datetime import UTC, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents.models import Agent
from approvals.models import Eligibility, Review
from tests.approvals.test_reviews import due_review, make_eligible, sweep
from tests.factories import AgentFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.eligibility]


def section(html: str, element_id: str) -> str:
    """The element with this id, up to the end of its card."""
    assert f'id="{element_id}"' in html, f"no #{element_id}"
    return html.split(f'id="{element_id}"')[1].split("</section>")[0]


def later(days):
    return time_machine.travel(timezone.now() + timedelta(days=days), tick=False)


@pytest.fixture
def team_member(team):
    """Sees the agent (its team's view right), but does not answer its reviews."""
    person = UserFactory(username="operator")
    person.groups.add(team)
    return person


@pytest.fixture
def open_review(agent, privileges):
    make_eligible(agent, privileges["write"])  # high: reviewed every 90 days
    agent.refresh_from_db()
    return due_review(agent)


def test_the_sponsor_sees_the_open_review_prominently_and_opens_it(web, agent, open_review):
    html = web(agent.sponsor).get(f"/agents/{agent.pk}/").content.decode()

    notice = section(html, "open-review")
    assert "Review due" in notice
    assert f"Review #{open_review.pk} of Invoice bot was due" in notice
    link = re.search(r'<a class="button" id="open-review-link" href="([^"]+)"', notice)
    assert link and link.group(1) == f"/reviews/{open_review.pk}/"
    assert html.index('id="open-review"') < html.index('id="owner-h"')  # above the cards
    assert web(agent.sponsor).get(link.group(1)).status_code == 200


def test_an_open_review_past_its_due_date_reads_overdue_and_escalated(web, agent, open_review):
    days = (open_review.due - timezone.localdate()).days
    with later(days + 7):
        sweep()  # halfway through the grace period: escalated to the team
        html = web(agent.sponsor).get(f"/agents/{agent.pk}/").content.decode()
    notice = section(html, "open-review")
    assert "Review overdue" in notice
    assert "has been escalated to payments-platform" in notice


def test_someone_else_who_sees_the_agent_reads_who_it_waits_for_without_a_link(
    web, agent, open_review, team_member
):
    page = web(team_member).get(f"/agents/{agent.pk}/")
    assert page.status_code == 200
    notice = section(page.content.decode(), "open-review")
    assert "Waiting for its sponsor, sponsor." in notice
    assert "/reviews/" not in notice
    assert web(team_member).get(f"/reviews/{open_review.pk}/").status_code == 404


def test_the_history_shows_each_result_reviewer_and_date(
    web, agent, open_review, team_member, admin_user, privileges
):
    write = Eligibility.objects.in_force().get(agent=agent)
    answered = web(agent.sponsor).post(
        f"/reviews/{open_review.pk}/",
        {f"decision-{write.pk}": "remove", "verdict": "attest", "comment": "no longer writes"},
    )
    assert answered.status_code == 302
    open_review.refresh_from_db()
    # The next one, left unanswered until it expires (the overdue action is only recorded).
    make_eligible(agent, privileges["admin"])  # critical: due in 30 days
    agent.refresh_from_db()
    expired = due_review(agent)
    with later((expired.due - timezone.localdate()).days + 14):
        sweep()
    expired.refresh_from_db()
    assert expired.status == Review.Status.EXPIRED
    agent.refresh_from_db()
    assert agent.status == Agent.Status.SUSPENDED

    html = web(agent.sponsor).get(f"/agents/{agent.pk}/").content.decode()

    assert 'id="open-review"' not in html
    history = section(html, "review-history")
    completed = history.split(f'id="agent-review-{open_review.pk}"')[1].split("</tr>")[0]
    assert f'<a href="/reviews/{open_review.pk}/">#{open_review.pk}</a>' in completed
    assert "Attest: still needed as it is; 1 eligibility removed" in completed
    assert "<td>sponsor</td>" in completed
    closed = open_review.closed_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert f'<time datetime="{closed}"' in completed
    unanswered = history.split(f'id="agent-review-{expired.pk}"')[1].split("</tr>")[0]
    assert "Expired unanswered" in unanswered and "<td>nobody</td>" in unanswered
    assert history.index(f"agent-review-{expired.pk}") < history.index(
        f"agent-review-{open_review.pk}"
    )  # newest first
    # The team member reads the same history, unlinked; an admin gets the links.
    theirs = section(
        web(team_member).get(f"/agents/{agent.pk}/").content.decode(), "review-history"
    )
    assert "Attest: still needed as it is" in theirs and "/reviews/" not in theirs
    admins = section(web(admin_user).get(f"/agents/{agent.pk}/").content.decode(), "review-history")
    assert f'href="/reviews/{expired.pk}/"' in admins


def test_an_agent_never_reviewed_says_so(web, agent):
    html = web(agent.sponsor).get(f"/agents/{agent.pk}/").content.decode()
    assert 'id="open-review"' not in html
    assert "No review has closed yet." in section(html, "review-history")


def test_an_outsider_gets_no_agent_page(web, agent, open_review, outsider):
    assert web(outsider).get(f"/agents/{agent.pk}/").status_code == 404


def closed_reviews(agent, n: int) -> None:
    """n reviews of the agent that came and went (rows written directly: history to list)."""
    now = timezone.now()
    Review.objects.bulk_create(
        Review(
            agent=agent,
            period_start=now - timedelta(days=k + 1),
            period_end=now - timedelta(days=k),
            due=(now - timedelta(days=k)).date(),
            status=Review.Status.COMPLETED,
            opened_at=now - timedelta(days=k),
            closed_at=now - timedelta(days=k),
            reviewer=agent.sponsor,
            verdict=Review.Verdict.ATTEST,
            decisions={},
        )
        for k in range(1, n + 1)
    )


def test_the_agent_page_query_count_does_not_grow_with_its_reviews(web, agent, open_review):
    client = web(agent.sponsor)
    client.get(f"/agents/{agent.pk}/")  # warm the session
    with CaptureQueriesContext(connection) as few:
        client.get(f"/agents/{agent.pk}/")
    closed_reviews(agent, 30)
    with CaptureQueriesContext(connection) as many:
        html = client.get(f"/agents/{agent.pk}/").content.decode()
    assert len(many) == len(few), [query["sql"] for query in many.captured_queries]
    assert html.count('id="agent-review-') == 19  # the latest 20 with the open one


def test_the_review_list_and_dashboard_page_a_campaign_in_fixed_queries(web, sponsor, team):
    agents = [AgentFactory(name=f"Bot {n:03d}", sponsor=sponsor, team=team) for n in range(3)]
    Agent.objects.filter(pk__in=[a.pk for a in agents]).update(review_due=timezone.localdate())
    sweep()
    client = web(sponsor)
    client.get("/reviews/")
    with CaptureQueriesContext(connection) as few:
        html = client.get("/reviews/").content.decode()
    assert html.count('<li><a href="/reviews/') == 3
    client.get("/")  # warm
    with CaptureQueriesContext(connection) as dashboard_few:
        client.get("/")
    for agent in agents:
        closed_reviews(agent, 5)
    more = [AgentFactory(name=f"Bot {n:03d}", sponsor=sponsor, team=team) for n in range(3, 104)]
    Agent.objects.filter(pk__in=[a.pk for a in more]).update(review_due=timezone.localdate())
    sweep()
    with CaptureQueriesContext(connection) as many:
        html = client.get("/reviews/").content.decode()
    assert len(many) == len(few), [query["sql"] for query in many.captured_queries]
    with CaptureQueriesContext(connection) as dashboard_many:
        dashboard = client.get("/").content.decode()
    assert len(dashboard_many) == len(dashboard_few)
    assert section(dashboard, "reviews-waiting-h").count('<a href="/reviews/') == 11  # 10 + "All"
    open_list = html.split('id="open-reviews"')[1].split("</ul>")[0]
    assert open_list.count("<li>") == 100
    assert "1–100 of 104, the soonest due first." in html
    assert 'href="?page=2"' in html
    second = client.get("/reviews/?page=2").content.decode()
    assert second.split('id="open-reviews"')[1].split("</ul>")[0].count("<li>") == 4
    assert client.get("/reviews/?page=oops").status_code == 200  # the first page
