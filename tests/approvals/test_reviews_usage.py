"""A review's use figures over HTTP, across two review periods: each eligibility's counts are the
period's, its last use is the last ever (in the period or before it), and the page says so; the
page's query count does not grow with the agent's history. The clock moves by time-machine;
the agent acts through the API with an SVID minted at the moment it acts."""

import itertools
import re
from datetime import UTC, timedelta

import pytest
import time_machine
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from approvals.models import AccessRequest, Grant, Review
from tests.approvals.conftest import submit
from tests.approvals.test_reviews import make_eligible, sweep

pytestmark = [pytest.mark.django_db, pytest.mark.eligibility]
TASKS = itertools.count(1)


def web(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def agent_client(agent, signer) -> APIClient:
    """The agent's API client, its SVID minted now (on the travelled clock)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
    return client


def use_read(agent, signer, *, tool_call: bool) -> Grant:
    """payments-db:read (low risk, granted at once), with a tool call under it if asked."""
    api = agent_client(agent, signer)
    response = submit(api, "payments-db:read", task_id=f"task-{next(TASKS)}")
    assert response.status_code == 201, response.content
    grant = Grant.objects.get(pk=response.json()["grant"]["id"])
    if tool_call:
        called = api.post(
            f"/api/v1/grants/{grant.pk}/tool-calls",
            {"tool": "sql.select", "target": "ledger", "outcome": "success"},
            format="json",
        )
        assert called.status_code in (200, 201), called.content
    return grant


def row_of(html: str, eligibility) -> str:
    return html.split(f'id="use-{eligibility.pk}"')[1].split("</tr>")[0]


def counts(row: str) -> list[int]:
    """requests, approved, denied, grants, tool calls: the five number cells of a row."""
    return [int(n) for n in re.findall(r"<td>(\d+)</td>", row)]


def last_use(row: str) -> str:
    """The `datetime` of the row's last-use <time> (UTC), or the cell's words without one."""
    found = re.search(r'<time datetime="([^"]+)"', row)
    return found.group(1) if found else row.split("<td>")[-2].split("</td>")[0]


def utc(moment) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def second_review(agent, signer, privileges):
    """Read and write eligible. Before the first review: read used (a request, its grant, a
    tool call) and write asked for once (a request waiting for people). The first review keeps
    both; in the second period only read is used, once, without a tool call. Returns the
    travel offset (days) at which the second review is open, the two eligibilities and the
    uses whose times the page must show."""
    read = make_eligible(agent, privileges["read"])
    write = make_eligible(agent, privileges["write"])
    use_read(agent, signer, tool_call=True)
    asked = submit(agent_client(agent, signer), "payments-db:write", task_id="report")
    assert asked.status_code == 201, asked.content
    write_request = AccessRequest.objects.get(pk=asked.json()["id"])
    agent.refresh_from_db()
    first_due = (agent.review_due - timezone.localdate()).days  # high risk: 90 days
    with time_machine.travel(timezone.now() + timedelta(days=first_due), tick=False):
        sweep()
        first = Review.objects.get(agent=agent, status=Review.Status.OPEN)
        answered = web(agent.sponsor).post(
            f"/reviews/{first.pk}/",
            {f"decision-{read.pk}": "keep", f"decision-{write.pk}": "keep", "verdict": "attest"},
        )
        assert answered.status_code == 302
    with time_machine.travel(timezone.now() + timedelta(days=first_due + 10), tick=False):
        in_period = use_read(agent, signer, tool_call=False)
    agent.refresh_from_db()
    second_due = (agent.review_due - timezone.localdate()).days
    assert second_due == first_due + 90
    with time_machine.travel(timezone.now() + timedelta(days=second_due), tick=False):
        sweep()
    second = Review.objects.get(agent=agent, status=Review.Status.OPEN)
    assert second.period_start == first.period_end
    return {
        "days": second_due,
        "review": second,
        "read": read,
        "write": write,
        "write_request": write_request,
        "in_period": in_period,
    }


def test_counts_are_the_periods_and_last_use_is_the_last_ever(agent, second_review):
    read, write = second_review["read"], second_review["write"]
    with time_machine.travel(timezone.now() + timedelta(days=second_review["days"]), tick=False):
        page = web(agent.sponsor).get(f"/reviews/{second_review['review'].pk}/")
    assert page.status_code == 200
    html = page.content.decode()

    read_row, write_row = row_of(html, read), row_of(html, write)
    # The second period only: one request, approved, its grant, no tool call (the first
    # period's request, grant and tool call are not counted again).
    assert counts(read_row) == [1, 1, 0, 1, 0]
    grant = second_review["in_period"]
    assert last_use(read_row) == utc(max(grant.issued_at, grant.access_request.created_at))
    assert "(before the period)" not in read_row
    assert 'value="keep" checked' in read_row
    # Write was asked for before the period and not since: nothing counted, its last use the
    # request before the period, said so, and pre-marked for removal.
    assert counts(write_row) == [0, 0, 0, 0, 0]
    assert last_use(write_row) == utc(second_review["write_request"].created_at)
    assert "(before the period)" in write_row
    assert 'value="remove" checked' in write_row
    # The page says what the figures mean.
    assert "count the period's use only; the last use is the latest ever" in html
    assert "Last use (ever)" in html


def test_an_eligibility_never_used_says_never(agent, signer, privileges):
    read = make_eligible(agent, privileges["read"])
    refund = make_eligible(agent, privileges["refund"])
    use_read(agent, signer, tool_call=True)
    agent.refresh_from_db()
    with time_machine.travel(timezone.now() + timedelta(days=180), tick=False):
        sweep()
        review = Review.objects.get(agent=agent, status=Review.Status.OPEN)
        html = web(agent.sponsor).get(f"/reviews/{review.pk}/").content.decode()
    assert counts(row_of(html, read)) == [1, 1, 0, 1, 1]
    refund_row = row_of(html, refund)
    assert counts(refund_row) == [0, 0, 0, 0, 0]
    assert last_use(refund_row) == "never"


def test_the_review_page_reads_a_fixed_number_of_queries_whatever_the_history(
    agent, second_review, signer, django_assert_max_num_queries
):
    days = second_review["days"]
    review = second_review["review"]
    with time_machine.travel(timezone.now() + timedelta(days=days), tick=False):
        client = web(agent.sponsor)
        client.get(f"/reviews/{review.pk}/")  # warm the session
        with django_assert_max_num_queries(20) as counted:
            assert client.get(f"/reviews/{review.pk}/").status_code == 200
        few = len(counted.captured_queries)
    # More use in the period and before it: requests, grants and tool calls.
    for offset in (days - 100, days - 5, days - 4):
        with time_machine.travel(timezone.now() + timedelta(days=offset), tick=False):
            use_read(agent, signer, tool_call=True)
            use_read(agent, signer, tool_call=True)
    with time_machine.travel(timezone.now() + timedelta(days=days), tick=False):
        client = web(agent.sponsor)
        client.get(f"/reviews/{review.pk}/")
        with django_assert_max_num_queries(few):
            html = client.get(f"/reviews/{review.pk}/").content.decode()
    assert counts(row_of(html, second_review["read"])) == [5, 5, 0, 5, 4]
