"""Pages people can read: durations in words, times in the person's zone, data as key-value
tables, audit evidence named and linked, a verb filter that knows the verbs, a chain of custody
that is the request's own, and grants that leave "Active now" when they end."""

import re
from datetime import UTC, datetime

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents.models import SponsorProfile
from approvals import services
from audit.models import AuditEvent
from audit.services import Actor
from tests.factories import AccessRequestFactory, AgentFactory, AuditEventFactory, UserFactory
from tests.frontend.conftest import approve

HTMX = {"HTTP_HX_REQUEST": "true"}


def text(response) -> str:
    return response.content.decode()


# --- durations in words --------------------------------------------------------------------------


def test_durations_read_as_words_on_the_request_page_and_in_the_inbox(web, sponsor, pending):
    access_request = pending(duration_seconds=3030)

    page = text(web(sponsor).get(f"/requests/{access_request.pk}/"))
    inbox = text(web(sponsor).get("/inbox/"))

    assert (
        "<dt>Duration asked</dt><dd>50 min 30 s <small>(at most 1 h for this privilege)</small>"
        in page
    )
    assert "3030 s" not in page
    assert "50 min 30 s asked" in inbox


def test_a_grant_shows_its_length_and_time_left_in_words(web, sponsor, granted):
    grant = granted(duration_seconds=1800)

    page = text(web(sponsor).get(f"/requests/{grant.access_request_id}/"))

    assert "</time> (30 min)." in page  # issued … expires … (its length)
    assert re.search(r'class="countdown"[^>]*>(29 min \d+ s|30 min)</span> left', page)


# --- the person's time zone -----------------------------------------------------------------------


def test_a_person_sets_their_time_zone_and_every_time_follows_it(web, sponsor, pending):
    client = web(sponsor)
    assert "Now: <strong>UTC</strong>" in text(client.get("/profile/"))

    response = client.post("/profile/", {"time_zone": "America/New_York"})

    assert response.status_code == 302
    assert SponsorProfile.objects.get(user=sponsor).time_zone == "America/New_York"
    event = AuditEvent.objects.get(verb="profile.time_zone_changed")
    assert (event.actor_id, event.data["to"]) == ("sponsor", "America/New_York")
    with time_machine.travel(datetime(2026, 11, 29, 14, 3, tzinfo=UTC), tick=True):
        access_request = pending()
        html = text(client.get(f"/requests/{access_request.pk}/"))
    assert 'title="2026-11-29 14:03 UTC">29 Nov 2026, 09:03 EST</time>' in html


def test_an_unknown_time_zone_is_refused_with_a_sentence(web, sponsor):
    response = web(sponsor).post("/profile/", {"time_zone": "Mars/Olympus_Mons"})

    assert response.status_code == 400
    assert "is not a time zone name such as Europe/Paris" in text(response)
    assert SponsorProfile.objects.get(user=sponsor).time_zone == "UTC"
    assert not AuditEvent.objects.filter(verb="profile.time_zone_changed").exists()


def test_an_admin_sets_a_persons_zone_in_admin_and_it_is_audited(web, admin_user, sponsor):
    profile = SponsorProfile.objects.get(user=sponsor)
    client = web(admin_user)
    url = f"/admin/agents/sponsorprofile/{profile.pk}/change/"
    form = {"user": sponsor.pk, "slack_user_id": "USPONSOR1"}

    refused = client.post(url, {**form, "time_zone": "Nowhere/Special"})
    saved = client.post(url, {**form, "time_zone": "Asia/Tokyo"})

    assert refused.status_code == 200 and "is not a time zone name" in text(refused)
    assert saved.status_code == 302
    assert SponsorProfile.objects.get(user=sponsor).time_zone == "Asia/Tokyo"
    event = AuditEvent.objects.get(verb="profile.time_zone_changed")
    assert (event.actor_id, event.data["from"], event.data["to"]) == ("admin", "UTC", "Asia/Tokyo")


# --- key-value tables -----------------------------------------------------------------------------


def test_context_and_claims_are_key_value_tables_never_python_reprs(web, sponsor, granted):
    grant = granted(
        context={"ticket": "FIN-1234", "ledger": {"month": "2026-11", "rows": [3, 7]}, "dry": True}
    )

    html = text(web(sponsor).get(f"/requests/{grant.access_request_id}/"))

    assert '<tr><th scope="row">ticket</th><td>FIN-1234</td></tr>' in html
    # A nested object is a nested table, a list a list (key order is the database's).
    assert '<tr><th scope="row">ledger</th><td><table class="kv"><tbody><tr>' in html
    assert '<tr><th scope="row">month</th><td>2026-11</td></tr>' in html
    assert (
        '<tr><th scope="row">rows</th><td><ul class="kv-list"><li>3</li><li>7</li></ul></td></tr>'
        in html
    )
    assert '<tr><th scope="row">dry</th><td>yes</td></tr>' in html
    assert f'<tr><th scope="row">scope</th><td>{grant.scope}</td></tr>' in html  # a claim
    assert "{&#x27;" not in html and "{'" not in html and "[3, 7]" not in html


def test_audit_data_is_a_key_value_table_with_markup_escaped(web, admin_user):
    AuditEventFactory(verb="tool.called", data={"target": "<script>x</script>", "n": 1})

    html = text(web(admin_user).get("/audit/?verb=tool.called"))

    assert '<tr><th scope="row">target</th><td>&lt;script&gt;x&lt;/script&gt;</td></tr>' in html
    assert "<script>x</script>" not in html


# --- audit actors and subjects, named and linked --------------------------------------------------


def test_audit_subjects_and_actors_are_named_and_linked(web, sponsor, agent, granted):
    grant = granted()
    AuditEventFactory(
        actor=Actor.for_agent(agent),
        verb="tool.called",
        agent_id=agent.pk,
        access_request_id=grant.access_request_id,
        grant_id=grant.pk,
        data={"tool": "refund"},
    )

    html = text(web(sponsor).get("/audit/?verb=tool.called"))

    row = html[html.index('<tr id="event-') :]
    link = f'<a href="/agents/{agent.pk}/">Invoice bot</a>'
    assert f"<td>{link} <small>(agent)</small></td>" in row  # the actor, by name
    assert (
        f"<td>{link} · "
        f'<a href="/requests/{grant.access_request_id}/">request #{grant.access_request_id}</a> · '
        f'<a href="/requests/{grant.access_request_id}/#grant-h">grant #{grant.pk}</a></td>'
    ) in row
    assert "agent:spiffe" not in html and "user:sponsor" not in html
    trail = text(web(sponsor).get(f"/requests/{grant.access_request_id}/"))
    assert "<td>sponsor <small>(person)</small></td>" in trail  # the approver's decision


def test_names_outside_the_persons_view_stay_ids_without_links(web, sponsor, agent):
    hidden = AgentFactory(name="Research bot", sponsor=UserFactory(username="carol"))
    # About the sponsor's agent, done by an agent the sponsor cannot see.
    AuditEventFactory(actor=Actor.for_agent(hidden), verb="tool.called", agent_id=agent.pk)

    html = text(web(sponsor).get("/audit/?verb=tool.called"))

    assert "Research bot" not in html
    assert f"<td>{hidden.spiffe_id} <small>(agent)</small></td>" in html


def test_naming_audit_subjects_costs_the_same_queries_for_ten_rows_as_for_one(
    web, admin_user, sponsor, team, granted
):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/audit/?verb=tool.called").status_code == 200
        return len(captured)

    def evidence():
        helper = AgentFactory(sponsor=sponsor, team=team)
        grant = granted(for_agent=helper)
        AuditEventFactory(
            actor=Actor.for_agent(helper),
            verb="tool.called",
            agent_id=helper.pk,
            access_request_id=grant.access_request_id,
            grant_id=grant.pk,
        )

    client = web(admin_user)
    evidence()
    client.get("/audit/")
    one = queries()
    for _ in range(9):
        evidence()

    assert queries() == one


# --- the verb filter ------------------------------------------------------------------------------


def test_a_verb_family_matches_every_verb_in_it(web, admin_user, granted):
    grant = granted()
    services.grant_revoke(grant=grant, actor=Actor.system("test"))

    html = text(web(admin_user).get("/audit/?verb=grant.*"))

    cells = re.findall(r'<td class="verb"><code>([a-z_]+)\.<wbr>([a-z_]+)</code></td>', html)
    verbs = {f"{family}.{rest}" for family, rest in cells}
    assert verbs == {"grant.issued", "grant.revoked"}


def test_the_verb_filter_offers_the_known_verbs_and_families(web, admin_user):
    html = text(web(admin_user).get("/audit/"))

    assert 'list="audit-verbs"' in html
    assert '<option value="grant.*">' in html and '<option value="grant.issued">' in html
    assert '<option value="auth.rejected">' in html


def test_an_unknown_verb_is_a_bad_request_with_a_sentence(web, admin_user):
    response = web(admin_user).get("/audit/?verb=grant.exploded")

    assert response.status_code == 400
    assert "No evidence has the verb &#x27;grant.exploded&#x27;" in text(response)
    assert web(admin_user).get("/audit/?verb=nothing.*").status_code == 400


# --- the chain of custody: the request's own ------------------------------------------------------


@pytest.fixture
def delegations(sponsor, team, agent, backup_approver, pending):
    """A root grant with two delegations from it: one granted (with a grandchild of its own),
    one waiting for its own sponsor (it crosses to another sponsor's agent)."""
    root = approve(backup_approver, pending()).grant
    approved_helper = AgentFactory(name="Ledger helper", sponsor=sponsor, team=team)
    waiting_helper = AgentFactory(
        name="Waiting helper", sponsor=UserFactory(username="other-sponsor"), team=team
    )
    grandchild_helper = AgentFactory(name="Grandchild helper", sponsor=sponsor, team=team)

    def delegate(helper, parent):
        return AccessRequestFactory(
            agent=helper,
            privilege_name="payments-api:refund",
            task_id=root.task_id,
            duration_seconds=120,
            parent_grant=parent,
        )

    child = delegate(approved_helper, root).grant
    waiting = delegate(waiting_helper, root)
    grandchild = delegate(grandchild_helper, child).grant
    assert waiting.status == "pending"
    return {"root": root, "child": child, "waiting": waiting, "grandchild": grandchild}


def chain_of(html: str) -> str:
    start = html.index("Chain of custody")
    return html[start : html.index("</section>", start)]


def test_a_waiting_delegation_does_not_list_its_siblings_as_delegated_onward(
    web, admin_user, delegations
):
    chain = chain_of(text(web(admin_user).get(f"/requests/{delegations['waiting'].pk}/")))

    assert "Invoice bot" in chain  # its ancestor
    assert "Waiting helper asks for" in chain  # itself
    assert "Delegated onward" not in chain
    assert "Ledger helper" not in chain and "Grandchild helper" not in chain


def test_a_delegations_chain_is_its_ancestors_and_its_own_descendants(web, admin_user, delegations):
    chain = chain_of(
        text(web(admin_user).get(f"/requests/{delegations['child'].access_request_id}/"))
    )

    ancestors, onward = chain.split("Delegated onward")
    assert "Invoice bot" in ancestors and "Ledger helper" in ancestors
    assert "Grandchild helper" in onward
    assert "Waiting helper" not in chain


# --- live grants ----------------------------------------------------------------------------------


def test_the_grants_fragment_drops_an_ended_grant_and_says_who_ended_it_and_why(
    web, sponsor, granted
):
    kept, ended = granted(), granted()
    client = web(sponsor)
    assert f'<tr id="grant-{ended.pk}">' in text(client.get("/grants/", **HTMX))

    client.post(f"/grants/{ended.pk}/revoke/", {"reason": "done with the refunds"})
    fragment = text(client.get("/grants/", **HTMX))

    assert fragment.startswith('<div id="grants-live"') and "<html" not in fragment
    assert 'hx-trigger="every 5s"' in fragment
    active = fragment[: fragment.index("Ended in the last day")]
    assert f'<tr id="grant-{kept.pk}">' in active
    assert f'<tr id="grant-{ended.pk}">' not in active
    assert f'href="/grants/{ended.pk}/revoke/"' not in fragment  # no Revoke on an ended grant
    assert "Revoked by <strong>sponsor</strong>: “done with the refunds”" in fragment


def test_the_dashboards_active_card_refreshes_itself(web, sponsor, granted):
    grant = granted()
    client = web(sponsor)
    page = text(client.get("/"))
    assert 'id="active-grants" hx-get="/grants/active/" hx-trigger="every 5s"' in page

    services.grant_revoke(grant=grant, actor=Actor.for_user(sponsor))
    card = text(client.get("/grants/active/", **HTMX))

    assert f'id="active-grant-{grant.pk}"' not in card
    assert "No privilege is in force." in card
