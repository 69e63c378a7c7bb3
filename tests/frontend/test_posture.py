"""The posture page over HTTP: who may see it (staff, the view_posture permission; anyone else
404), what it counts, where each number links (and that those lists are filtered), and that
its query count does not grow with the estate."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents.models import Agent
from approvals.models import AccessRequest
from tests.factories import AccessRequestFactory, AgentFactory, UserFactory
from tests.frontend.conftest import approve

pytestmark = pytest.mark.django_db


def figure(html: str, href: str) -> int:
    """The number the page shows in the link to `href` (the chart's figure list)."""
    href = href.replace("&", "&amp;")
    found = re.search(rf'<li[^>]*><a href="{re.escape(href)}">[^<]*<strong>(\d+)</strong>', html)
    assert found, f"no figure linking to {href}"
    return int(found.group(1))


@pytest.fixture
def security_analyst(db):
    """The security team's role: the posture page, and (for the lists behind its figures)
    every agent and the whole audit log."""
    user = UserFactory(username="analyst")
    user.user_permissions.add(
        Permission.objects.get(codename="view_posture"),
        Permission.objects.get(codename="view_agent", content_type__app_label="agents"),
        Permission.objects.get(codename="view_auditevent"),
    )
    return user


@pytest.fixture
def estate(agent, sponsor, team, privileges, granted, pending):
    """Agents in every state and flag, requests policy answered in each way, grants by risk."""
    suspended = AgentFactory(name="Paused bot", sponsor=sponsor, team=team, status="suspended")
    AgentFactory(name="Old bot", sponsor=sponsor, team=team, status="retired")
    orphan = AgentFactory(name="Orphan bot", sponsor=sponsor, team=team)
    Agent.objects.filter(pk=orphan.pk).update(
        orphaned_at=timezone.now(), orphan_reason=Agent.OrphanReason.SPONSOR_INACTIVE
    )
    quiet = AgentFactory(name="Quiet bot", sponsor=sponsor, team=team)
    Agent.objects.filter(pk=quiet.pk).update(dormant_at=timezone.now())
    Agent.objects.filter(pk=agent.pk).update(review_due=timezone.localdate() - timedelta(days=1))
    auto = pending("payments-db:read")  # low-risk read: policy grants it at once
    assert auto.policy_outcome == AccessRequest.Outcome.AUTO_APPROVE
    granted("payments-api:refund")  # medium, decided by the sponsor
    pending("payments-api:refund")  # still waiting
    return {"suspended": suspended, "orphan": orphan, "quiet": quiet}


def test_it_is_not_found_for_people_without_the_right(web, sponsor, outsider):
    for person in (sponsor, outsider):
        response = web(person).get("/posture/")
        assert response.status_code == 404
        assert 'href="/posture/"' not in web(person).get("/").content.decode()


def test_it_sends_the_signed_out_to_sign_in(client):
    response = client.get("/posture/")
    assert response.status_code == 302
    assert "/login/" in response["Location"]


@pytest.mark.parametrize("who", ["staff", "admin", "security team", "the permission alone"])
def test_it_shows_staff_admins_and_the_security_team(web, who, admin_user, security_analyst):
    if who == "the permission alone":
        person = UserFactory(username="posture-only")
        person.user_permissions.add(Permission.objects.get(codename="view_posture"))
    else:
        person = {
            "staff": UserFactory(username="staffer", is_staff=True),
            "admin": admin_user,
            "security team": security_analyst,
        }[who]
    response = web(person).get("/posture/")
    assert response.status_code == 200
    assert 'href="/posture/"' in response.content.decode()  # and the nav links to it


def test_it_counts_agents_by_status_and_flag(web, admin_user, estate):
    html = web(admin_user).get("/posture/").content.decode()
    # invoice bot, orphan, quiet (active); paused (suspended); old (retired).
    assert figure(html, "/agents/?status=active") == 3
    assert figure(html, "/agents/?status=suspended") == 1
    assert figure(html, "/agents/?status=retired") == 1
    assert figure(html, "/agents/?flag=orphaned") == 1
    assert figure(html, "/agents/?flag=dormant") == 1
    assert figure(html, "/agents/?flag=review_overdue") == 1


def test_each_agent_figure_links_to_its_list(web, admin_user, estate):
    client = web(admin_user)
    cases = {
        "/agents/?status=suspended": {"Paused bot"},
        "/agents/?status=retired": {"Old bot"},
        "/agents/?flag=orphaned": {"Orphan bot"},
        "/agents/?flag=dormant": {"Quiet bot"},
        "/agents/?flag=review_overdue": {"Invoice bot"},
    }
    for url, names in cases.items():
        html = client.get(url).content.decode()
        listed = set(re.findall(r'<td><a href="/agents/\d+/">([^<]+)</a>', html))
        assert listed == names, url
    everyone = client.get("/agents/?status=bogus").content.decode()
    assert len(re.findall(r'<tr id="agent-\d+">', everyone)) == 5  # unknown values are ignored


def test_it_counts_requests_by_policy_outcome_and_grants_by_risk(web, admin_user, estate):
    html = web(admin_user).get("/posture/").content.decode()
    assert "33%" in html  # one of three requests approved automatically
    assert re.search(r"\(1 of 3\)", html)
    assert figure(html, "/grants/?risk=low") == 1
    assert figure(html, "/grants/?risk=medium") == 1
    assert figure(html, "/grants/?risk=high") == 0
    low_only = web(admin_user).get("/grants/?risk=low").content.decode()
    assert "payments-db:read" in low_only and "payments-api:refund" not in low_only
    assert "payments-api:refund" in web(admin_user).get("/grants/").content.decode()


def test_it_shows_the_median_time_to_a_decision(web, admin_user, sponsor, pending):
    now = timezone.now()
    for minutes in (1, 3, 20):
        access_request = pending("payments-api:refund")
        approve(sponsor, access_request)
        AccessRequest.objects.filter(pk=access_request.pk).update(
            created_at=now - timedelta(minutes=minutes), decided_at=now
        )
    html = web(admin_user).get("/posture/").content.decode()
    assert "Median <strong>3 min</strong>" in html


def test_it_lists_the_top_requesters_linked_to_their_pages(web, admin_user, agent, pending):
    other = AgentFactory(name="Chatty bot", sponsor=agent.sponsor, team=agent.team)
    for _ in range(3):
        pending("payments-api:refund", for_agent=other)
    pending("payments-api:refund")
    html = web(admin_user).get("/posture/").content.decode()
    assert figure(html, f"/agents/{other.pk}/") == 3
    assert figure(html, f"/agents/{agent.pk}/") == 1
    assert html.index(f'href="/agents/{other.pk}/"') < html.index(f'href="/agents/{agent.pk}/"')


def test_its_query_count_does_not_grow_with_the_estate(web, admin_user, estate, sponsor, team):
    client = web(admin_user)
    client.get("/posture/")  # warm: session, content types
    with CaptureQueriesContext(connection) as few:
        assert client.get("/posture/").status_code == 200
    for n in range(5):
        more = AgentFactory(name=f"More bot {n}", sponsor=sponsor, team=team)
        AccessRequestFactory(agent=more, privilege_name="payments-db:read")
        AccessRequestFactory(agent=more, privilege_name="payments-api:refund")
    with CaptureQueriesContext(connection) as many:
        assert client.get("/posture/").status_code == 200
    assert len(many) == len(few)
    assert len(few) <= 12, [query["sql"] for query in few.captured_queries]


def test_it_counts_drift_flags_and_links_to_their_evidence(web, admin_user, granted):
    from approvals.models import DriftFlag

    first, second = granted(task_id="t-1"), granted(task_id="t-2")
    for grant, outcome in ((first, "flag"), (first, "flag"), (second, "end")):
        DriftFlag.objects.create(grant=grant, kinds=["target"], outcome=outcome, tool="psql")
    DriftFlag.objects.create(
        grant=second,
        kinds=["burst"],
        outcome="flag",
        tool="psql",
        created_at=timezone.now() - timedelta(days=45),  # before the period
    )

    html = web(admin_user).get("/posture/").content.decode()

    card = html[html.index('id="posture-drift"') :]
    assert '<a href="/audit/?verb=grant.drift_flagged"><strong>3</strong> tool calls' in card
    assert "strayed from 2 grants' intent</a>" in card
    assert "1 ended its grant." in card


def decided_after(sponsor, pending, seconds: float, *, verdict="approve", now=None):
    """A request people decided `seconds` after it was submitted (times set exactly)."""
    now = now or timezone.now()
    access_request = pending("payments-api:refund")
    approve(sponsor, access_request, verdict=verdict)
    AccessRequest.objects.filter(pk=access_request.pk).update(
        created_at=now - timedelta(seconds=seconds), decided_at=now
    )
    return access_request


def test_the_median_is_computed_by_the_database_the_mean_of_the_middle_two(
    sponsor, pending, privileges
):
    from approvals.selectors_posture import posture_median_decision_seconds

    now = timezone.now()
    assert posture_median_decision_seconds(now=now) is None
    for seconds in (100.0, 10.0, 40.0, 20.5):  # even count: (20.5 + 40) / 2
        decided_after(sponsor, pending, seconds, now=now)
    decided_after(sponsor, pending, 7.0, verdict="deny", now=now)  # odd count now: 20.5
    # Neither counts: decided before the period, or granted by policy without a person.
    old = decided_after(sponsor, pending, 5000.0, now=now - timedelta(days=31))
    auto = AccessRequestFactory(agent=old.agent, privilege_name="payments-db:read")
    assert auto.policy_outcome == AccessRequest.Outcome.AUTO_APPROVE
    AccessRequest.objects.filter(pk=auto.pk).update(created_at=now - timedelta(seconds=1))
    with CaptureQueriesContext(connection) as queries:
        assert posture_median_decision_seconds(now=now) == pytest.approx(20.5, abs=1e-6)
    assert len(queries) == 1
    AccessRequest.objects.filter(status="denied").update(decided_at=now - timedelta(days=40))
    assert posture_median_decision_seconds(now=now) == pytest.approx(30.25, abs=1e-6)


def test_the_page_shows_the_median_of_an_even_count_as_the_mean_of_the_middle_two(
    web, admin_user, sponsor, pending
):
    for minutes in (1, 2, 6, 30):  # the middle two, 2 and 6 minutes: 4 min
        decided_after(sponsor, pending, minutes * 60)
    html = web(admin_user).get("/posture/").content.decode()
    assert "Median <strong>4 min</strong>" in html
