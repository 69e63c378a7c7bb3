"""The inbox under a noisy agent: search, filters, groups, keyset pages and bulk deny, through
Django's test client (HTTP in, HTML out)."""

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from django.utils import timezone

from approvals.models import AccessRequest, Decision, Grant
from audit.models import AuditEvent
from frontend import inbox as inbox_views
from frontend.forms import BAD_CURSOR
from tests.factories import AgentFactory, GroupFactory
from tests.frontend.conftest import approve

HTMX = {"HTTP_HX_REQUEST": "true"}


def text(response) -> str:
    return response.content.decode()


def shown(response) -> list[int]:
    """The request ids in the inbox's rows, in order."""
    return [int(pk) for pk in re.findall(r'<tr id="request-(\d+)"', text(response))]


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


@pytest.fixture(autouse=True)
def _room_for_a_flood(settings):
    settings.CUSTODY_MAX_PENDING_PER_AGENT = 1000


@pytest.fixture
def other_agent(db, sponsor, privileges):
    """A second agent of the same sponsor, on another team."""
    return AgentFactory(
        spiffe_id="spiffe://example.test/agents/ledger-sync",
        name="Ledger sync",
        sponsor=sponsor,
        team=GroupFactory(name="finance-ops"),
    )


@pytest.fixture
def mixed(pending, other_agent):
    """Requests a person would tell apart: by agent, privilege, task and intent."""
    return {
        "refund": pending(
            "payments-api:refund",
            task_id="t-42",
            intent={
                "action": "refund",
                "target": "invoice 7731",
                "justification": "The customer was charged twice.",
            },
        ),
        "write": pending("payments-db:write", task_id="close-books"),
        "ledger": pending("payments-api:refund", for_agent=other_agent, task_id="sync-9"),
    }


# --- search and filters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Ledger sync", ["ledger"]),  # agent name
        ("agents/ledger-sync", ["ledger"]),  # SPIFFE ID
        ("payments-db:write", ["write"]),  # privilege
        ("payments-api:re", ["refund", "ledger"]),  # privilege by its start
        ("t-42", ["refund"]),  # task id
        ("charged twice", ["refund"]),  # words in the justification, both must match
        ("CHARGED invoice", ["refund"]),  # case does not matter
        ("nothing-like-this", []),
    ],
)
def test_it_searches_agent_privilege_task_and_intent(web, sponsor, mixed, query, expected):
    response = web(sponsor).get("/inbox/", {"q": query})

    assert response.status_code == 200
    assert sorted(shown(response)) == sorted(mixed[name].pk for name in expected)


def test_it_finds_a_request_by_its_number(web, sponsor, mixed):
    wanted = mixed["write"]

    response = web(sponsor).get("/inbox/", {"q": f"#{wanted.pk}"})

    assert shown(response) == [wanted.pk]


def test_it_filters_by_risk_agent_team_and_task(web, sponsor, mixed, agent, other_agent):
    client = web(sponsor)

    assert shown(client.get("/inbox/", {"risk": "high"})) == [mixed["write"].pk]
    assert shown(client.get("/inbox/", {"agent": other_agent.pk})) == [mixed["ledger"].pk]
    assert shown(client.get("/inbox/", {"team": other_agent.team_id})) == [mixed["ledger"].pk]
    assert shown(client.get("/inbox/", {"task": "close-books"})) == [mixed["write"].pk]
    both = client.get("/inbox/", {"agent": agent.pk, "risk": "medium"})
    assert shown(both) == [mixed["refund"].pk]


def test_it_filters_by_age(web, sponsor, mixed):
    AccessRequest.objects.filter(pk=mixed["write"].pk).update(
        created_at=timezone.now() - timedelta(hours=2)
    )
    client = web(sponsor)

    assert shown(client.get("/inbox/", {"age": "1h"})) == [mixed["write"].pk]
    assert shown(client.get("/inbox/", {"age": "1d"})) == []


def test_a_search_says_how_many_match_and_keeps_its_url(web, sponsor, mixed):
    response = web(sponsor).get("/inbox/", {"q": "payments-api:refund"})

    html = text(response)
    assert "<strong>2</strong> waiting for you match this search." in html
    # The auto-refresh asks for the same search, not for the whole inbox.
    assert 'hx-get="/inbox/?q=payments-api%3Arefund"' in html
    assert 'value="payments-api:refund"' in html  # the search box keeps the words


def test_the_filter_offers_the_agents_and_teams_in_the_inbox(web, sponsor, mixed, other_agent):
    html = text(web(sponsor).get("/inbox/"))

    assert f'<option value="{other_agent.pk}">Ledger sync (1)</option>' in html
    assert "Invoice bot (2)" in html
    assert f'<option value="{other_agent.team_id}">finance-ops (1)</option>' in html


def test_a_search_with_htmx_answers_with_the_list_only(web, sponsor, mixed):
    response = web(sponsor).get("/inbox/", {"q": "Ledger sync"}, **HTMX)

    html = text(response)
    assert response.status_code == 200
    assert html.startswith('<div id="inbox" hx-get="/inbox/?q=Ledger+sync"')
    assert "<html" not in html
    assert shown(response) == [mixed["ledger"].pk]


def test_a_search_with_htmx_brings_its_groups_along_out_of_band(web, sponsor, mixed):
    html = text(web(sponsor).get("/inbox/", {"q": "payments-api:refund"}, **HTMX))

    groups = html[html.index('<div id="inbox-groups" hx-swap-oob="true">') :]
    assert "Invoice bot · task t-42 · 1 pending" in groups
    assert "Ledger sync · task sync-9 · 1 pending" in groups
    assert "close-books" not in groups  # not matching the search


def test_the_lists_own_refresh_skips_the_filter_choices_and_groups(web, sponsor, mixed):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = web(sponsor)
    url = "/inbox/?q=payments-api%3Arefund"
    client.get(url, **HTMX)
    with CaptureQueriesContext(connection) as searched:
        client.get(url, **HTMX)
    with CaptureQueriesContext(connection) as refreshed:
        response = client.get(url, HTTP_HX_TRIGGER="inbox", **HTMX)

    html = text(response)
    assert sorted(shown(response)) == sorted([mixed["refund"].pk, mixed["ledger"].pk])
    assert "<strong>2</strong> waiting for you match this search." in html
    assert 'name="upto"' in html  # the bulk form still knows what the person sees
    assert "inbox-groups" not in html  # the groups outside the list stay as they are
    assert len(refreshed) < len(searched)


def test_search_never_reaches_past_what_the_person_may_decide(
    web, sponsor, outsider, teammate, mixed
):
    for person in (outsider, teammate):
        for query in ("Ledger", f"#{mixed['refund'].pk}", "payments"):
            response = web(person).get("/inbox/", {"q": query})
            assert shown(response) == []
            assert "Nothing waiting for you matches this search." in text(response)


@pytest.mark.parametrize(
    ("params", "sentence"),
    [
        ({"agent": "invoice-bot"}, "Pick an agent from the list."),
        ({"team": "-3"}, "Pick a team from the list."),
        ({"risk": "extreme"}, "Select a valid choice."),
        ({"age": "forever"}, "Select a valid choice."),
        ({"q": "x" * 201}, "at most 200 characters"),
        ({"after": "not-a-cursor"}, BAD_CURSOR),
    ],
)
def test_bad_filters_get_a_400_with_a_sentence(web, sponsor, mixed, params, sentence):
    response = web(sponsor).get("/inbox/", params)

    assert response.status_code == 400
    assert sentence in text(response)
    assert shown(response) == []


def test_an_edited_cursor_is_refused_not_followed(web, sponsor, pending, monkeypatch):
    monkeypatch.setattr(inbox_views, "INBOX_PAGE", 2)
    for _ in range(3):
        pending()
    client = web(sponsor)
    after = parse_qs(urlparse(next_link(client.get("/inbox/"))).query)["after"][0]
    value, signature = after.rsplit(":", 1)

    edited = client.get("/inbox/", {"after": f"{value}:{signature[::-1]}"})

    assert edited.status_code == 400
    assert BAD_CURSOR in text(edited)


# --- groups and pages --------------------------------------------------------------------------


def test_it_groups_by_agent_and_task_with_counts(web, sponsor, pending, other_agent):
    for _ in range(3):
        pending(task_id="t-42")
    pending(task_id="t-43")
    pending(for_agent=other_agent, task_id="sync-9")

    html = text(web(sponsor).get("/inbox/"))

    assert 'Invoice bot · <span class="count">4 pending</span>' in html
    assert "Invoice bot · task t-42 · 3 pending" in html
    assert "Invoice bot · task t-43 · 1 pending" in html
    assert "Ledger sync · task sync-9 · 1 pending" in html
    assert html.index("Invoice bot · <span") < html.index("Ledger sync · <span")  # busiest first


def test_a_group_link_opens_that_agent_and_task(web, sponsor, pending, agent):
    mine = [pending(task_id="t-42") for _ in range(2)]
    pending(task_id="t-43")
    client = web(sponsor)
    link = re.search(r'<a href="([^"]+)"[^>]*>Invoice bot · task t-42', text(client.get("/inbox/")))

    response = client.get(link.group(1).replace("&amp;", "&"))

    assert sorted(shown(response)) == [access_request.pk for access_request in mine]


def next_link(response) -> str:
    found = re.search(r'<a href="([^"]+)"[^>]*rel="next"', text(response))
    return found.group(1).replace("&amp;", "&") if found else ""


def test_pages_follow_by_keyset_without_gaps_or_repeats(web, sponsor, pending, monkeypatch):
    monkeypatch.setattr(inbox_views, "INBOX_PAGE", 4)
    requests = [pending() for _ in range(10)]
    # Two share a deadline: the id breaks the tie across a page boundary.
    AccessRequest.objects.filter(pk__in=[requests[3].pk, requests[4].pk]).update(
        decision_deadline=requests[3].decision_deadline
    )
    client = web(sponsor)

    seen, url, pages = [], "/inbox/", 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        seen.extend(shown(response))
        url = next_link(response)
        pages += 1

    assert pages == 3
    assert len(seen) == len(set(seen)) == 10
    ordered = AccessRequest.objects.filter(pk__in=seen).order_by("decision_deadline", "pk")
    assert seen == [access_request.pk for access_request in ordered]


def test_a_later_page_keeps_its_filter_and_offers_the_first(web, sponsor, pending, monkeypatch):
    monkeypatch.setattr(inbox_views, "INBOX_PAGE", 2)
    for _ in range(3):
        pending("payments-db:write")
    pending()
    client = web(sponsor)

    second = client.get(next_link(client.get("/inbox/", {"risk": "high"})))

    assert len(shown(second)) == 1 and not next_link(second)
    assert 'href="/inbox/?risk=high"' in text(second)  # "First page"


def test_the_inbox_query_count_does_not_grow_with_rows_or_filters(
    web, sponsor, pending, other_agent
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = web(sponsor)
    pending(for_agent=other_agent, task_id="t-1")
    url = f"/inbox/?q=refund&risk=medium&agent={other_agent.pk}&age=&task="
    client.get(url)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    one = queries()
    for n in range(8):
        pending(for_agent=other_agent, task_id=f"t-{n % 3}")
    assert queries() == one


# --- bulk deny ---------------------------------------------------------------------------------


def deny_bulk(client, ids=(), reason="Flood from a misconfigured agent.", **fields):
    body = {"reason": reason, "request": [str(pk) for pk in ids], **fields}
    return client.post("/inbox/deny/", body)


def test_bulk_deny_denies_each_selected_request_with_its_own_evidence(web, sponsor, mixed):
    chosen = [mixed["refund"].pk, mixed["ledger"].pk]

    response = deny_bulk(web(sponsor), chosen, q="refund")

    assert response.status_code == 302
    assert response["Location"] == "/inbox/?q=refund"
    for pk in chosen:
        access_request = AccessRequest.objects.get(pk=pk)
        assert access_request.status == AccessRequest.Status.DENIED
        decision = access_request.decisions.get()
        assert (decision.approver, decision.verdict, decision.channel, decision.comment) == (
            sponsor,
            Decision.Verdict.DENY,
            Decision.Channel.WEB,
            "Flood from a misconfigured agent.",
        )
        verbs = set(AuditEvent.objects.filter(access_request_id=pk).values_list("verb", flat=True))
        assert {"decision.recorded", "request.denied"} <= verbs
    assert AccessRequest.objects.get(pk=mixed["write"].pk).status == "pending"


def test_bulk_deny_with_htmx_answers_with_the_fresh_list(web, sponsor, mixed):
    response = web(sponsor).post(
        "/inbox/deny/",
        {"reason": "Not this week.", "request": [str(mixed["write"].pk)]},
        **HTMX,
    )

    html = text(response)
    assert response.status_code == 200
    assert html.startswith('<div id="inbox"')
    assert f"Denied 1 request: #{mixed['write'].pk}." in html
    assert mixed["write"].pk not in shown(response)
    assert sorted(shown(response)) == sorted([mixed["refund"].pk, mixed["ledger"].pk])


def test_bulk_deny_needs_a_reason(web, sponsor, mixed):
    client = web(sponsor)

    response = deny_bulk(client, [mixed["write"].pk], reason="  ")
    with_htmx = client.post("/inbox/deny/", {"request": [str(mixed["write"].pk)]}, **HTMX)

    assert response.status_code == 400
    assert "Give a reason for denying these requests" in text(response)
    # With htmx only the bulk form's message changes, so the ticked boxes stay ticked.
    assert with_htmx.status_code == 400
    assert (with_htmx["HX-Retarget"], with_htmx["HX-Reswap"]) == ("#bulk-message", "innerHTML")
    assert "Give a reason for denying these requests" in text(with_htmx)
    assert AccessRequest.objects.get(pk=mixed["write"].pk).status == "pending"
    assert not Decision.objects.exists()


@pytest.mark.parametrize(
    ("fields", "sentence"),
    [
        ({"request": []}, "Select at least one request to deny."),
        ({"request": ["12a"]}, "Selected requests are named by their numbers."),
        ({"request": [], "matching": "1"}, "needs the inbox page it was asked from"),
        ({"request": ["1"], "agent": "bot"}, "Pick an agent from the list."),
        ({"request": ["1"], "upto": "-5"}, "greater than or equal to 1"),
    ],
)
def test_bulk_deny_bad_input_gets_a_400_with_a_sentence(web, sponsor, mixed, fields, sentence):
    response = web(sponsor).post("/inbox/deny/", {"reason": "Flood.", **fields})

    assert response.status_code == 400
    assert sentence in text(response)
    assert not Decision.objects.exists()


def test_bulk_deny_of_requests_the_person_cannot_see_is_not_found(web, outsider, mixed):
    response = deny_bulk(web(outsider), [request.pk for request in mixed.values()])

    assert response.status_code == 404
    assert "None of the selected requests is one you can see." in messages_of(response)
    assert not Decision.objects.exists()
    assert set(AccessRequest.objects.values_list("status", flat=True)) == {"pending"}


def test_bulk_deny_by_someone_who_sees_but_may_not_decide_is_forbidden_and_audited(
    web, teammate, mixed
):
    response = deny_bulk(web(teammate), [mixed["refund"].pk, mixed["write"].pk])

    assert response.status_code == 403
    assert any("You may not decide requests" in message for message in messages_of(response))
    assert not Decision.objects.exists()
    refused = AuditEvent.objects.filter(verb="decision.refused", actor_id="teammate")
    assert sorted(refused.values_list("access_request_id", flat=True)) == sorted(
        [mixed["refund"].pk, mixed["write"].pk]
    )


def test_bulk_deny_reports_what_someone_else_decided_first(web, sponsor, backup_approver, mixed):
    approve(backup_approver, mixed["refund"])

    response = deny_bulk(web(sponsor), [mixed["refund"].pk, mixed["write"].pk])

    assert response.status_code == 302
    refund, write = (AccessRequest.objects.get(pk=mixed[n].pk) for n in ("refund", "write"))
    assert (refund.status, write.status) == ("approved", "denied")
    assert refund.decisions.count() == 1  # the backup approver's approval, nothing more
    assert Grant.objects.filter(access_request=refund, revoked_at=None).exists()
    page = web(sponsor).get(response["Location"])
    assert page.status_code == 200


def test_deny_all_matching_stops_at_what_the_person_saw(web, sponsor, pending, other_agent):
    flood = [pending(for_agent=other_agent, task_id="sync-9") for _ in range(3)]
    other = pending()
    client = web(sponsor)
    page = text(client.get("/inbox/", {"agent": other_agent.pk}))
    upto = int(re.search(r'name="upto" value="(\d+)"', page).group(1))
    assert "Deny all 3 matching" in page
    late = pending(for_agent=other_agent, task_id="sync-9")  # arrives after the person looked

    response = deny_bulk(client, [], agent=str(other_agent.pk), matching="1", upto=str(upto))

    assert response.status_code == 302
    statuses = dict(AccessRequest.objects.values_list("pk", "status"))
    assert [statuses[r.pk] for r in flood] == ["denied"] * 3
    assert (statuses[other.pk], statuses[late.pk]) == ("pending", "pending")


def test_bulk_deny_denies_at_most_the_configured_number_at_once(web, sponsor, pending, settings):
    settings.CUSTODY_BULK_DENY_MAX = 2
    requests = [pending() for _ in range(3)]
    client = web(sponsor)

    too_many = deny_bulk(client, [r.pk for r in requests])
    assert too_many.status_code == 400
    assert "At most 2 requests can be denied at once." in text(too_many)

    upto = str(max(r.pk for r in requests))
    response = deny_bulk(client, [], matching="1", upto=upto)
    assert response.status_code == 302
    assert AccessRequest.objects.filter(status="denied").count() == 2
    page = client.get(response["Location"])
    assert any("1 more match" in message for message in messages_of(page))


def test_the_inbox_offers_bulk_deny_and_never_bulk_approve(web, sponsor, mixed):
    html = text(web(sponsor).get("/inbox/"))

    assert 'form="bulk-deny"' in html and 'action="/inbox/deny/"' in html
    assert "Deny all 3 waiting" in html
    assert "Approve selected" not in html and "Approve all" not in html


def test_bulk_deny_ignores_a_smuggled_approve(web, sponsor, mixed):
    deny_bulk(web(sponsor), [mixed["refund"].pk], verdict="approve")

    assert AccessRequest.objects.get(pk=mixed["refund"].pk).status == "denied"
    assert not Grant.objects.exists()


def test_bulk_deny_needs_a_login_and_a_post(db, client, web, sponsor):
    assert client.post("/inbox/deny/", {"reason": "x"})["Location"].startswith("/login/")
    assert web(sponsor).get("/inbox/deny/").status_code == 405
