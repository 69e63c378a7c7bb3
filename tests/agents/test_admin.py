"""Django admin for agents: search, filters, and every change through the audited services."""

import datetime

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.utils import timezone
from guardian.shortcuts import get_user_perms

from agents.models import Agent
from agents.services import agent_retire
from audit.models import AuditEvent
from audit.services import Actor
from tests.factories import AgentFactory, GroupFactory, TrustDomainFactory, UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/agents/agent/"
ADD = "/admin/agents/agent/add/"
SPONSOR_PERMS = {"view_agent", "approve_for_agent", "manage_agent"}


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def fleet(sponsor, team):
    """Three agents that differ in name, sponsor, team, status and review date."""
    research = GroupFactory(name="research-platform")
    carol = UserFactory(username="carol")
    today = timezone.localdate()
    return {
        "invoice": AgentFactory(
            spiffe_id="spiffe://example.test/agents/invoice-bot",
            name="Invoice bot",
            sponsor=sponsor,
            team=team,
            review_due=today + datetime.timedelta(days=60),
        ),
        "refund": AgentFactory(
            spiffe_id="spiffe://example.test/agents/refund-helper",
            name="Refund helper",
            sponsor=sponsor,
            team=team,
            review_due=today - datetime.timedelta(days=3),
            status=Agent.Status.SUSPENDED,
        ),
        "research": AgentFactory(
            spiffe_id="spiffe://lab.example.test/agents/crawler",
            name="Research crawler",
            sponsor=carol,
            team=research,
            review_due=today + datetime.timedelta(days=200),
        ),
    }


def listed(response) -> set[str]:
    assert response.status_code == 200
    return {agent.name for agent in response.context["cl"].result_list}


def verbs_for(agent: Agent) -> list[str]:
    return list(
        AuditEvent.objects.filter(agent_id=agent.pk)
        .order_by("sequence")
        .values_list("verb", flat=True)
    )


def act(admin_client, action: str, agents, **extra):
    return admin_client.post(
        CHANGELIST,
        {"action": action, ACTION_CHECKBOX_NAME: [agent.pk for agent in agents], **extra},
    )


def test_it_lists_agents_with_their_sponsor_and_team(admin_client, fleet):
    response = admin_client.get(CHANGELIST)
    assert listed(response) == {"Invoice bot", "Refund helper", "Research crawler"}
    page = response.content.decode()
    assert "spiffe://example.test/agents/invoice-bot" in page
    assert "carol" in page
    assert "research-platform" in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("refund", {"Refund helper"}),  # name
        ("lab.example.test", {"Research crawler"}),  # SPIFFE ID
        ("carol", {"Research crawler"}),  # sponsor
        ("nothing-like-it", set()),
    ],
)
def test_it_searches_by_name_spiffe_id_and_sponsor(admin_client, fleet, query, expected):
    assert listed(admin_client.get(CHANGELIST, {"q": query})) == expected


def test_it_filters_by_status_team_and_overdue_review(admin_client, fleet):
    assert listed(admin_client.get(CHANGELIST, {"status__exact": "suspended"})) == {"Refund helper"}
    research = fleet["research"].team
    assert listed(admin_client.get(CHANGELIST, {"team__id__exact": research.pk})) == {
        "Research crawler"
    }
    assert listed(admin_client.get(CHANGELIST, {"review": "overdue"})) == {"Refund helper"}
    assert listed(admin_client.get(CHANGELIST, {"review": "due_30"})) == set()


def test_it_registers_an_agent_added_in_admin_through_the_service(admin_client, sponsor, team):
    TrustDomainFactory(name="example.test")
    response = admin_client.post(
        ADD,
        {
            "spiffe_id": "spiffe://example.test/agents/new-bot",
            "name": "New bot",
            "description": "Files expense reports",
            "sponsor": sponsor.pk,
            "team": team.pk,
            "review_due": "",
            "max_delegation_depth": 3,
            "oidc_trust_domain": "",
            "oidc_subject": "",
            "kind": "agent",
            "introspection_audiences": "[]",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    agent = Agent.objects.get(spiffe_id="spiffe://example.test/agents/new-bot")
    assert (agent.name, agent.sponsor, agent.team) == ("New bot", sponsor, team)
    assert agent.review_due is not None  # the service's default review cadence
    assert set(get_user_perms(sponsor, agent)) == SPONSOR_PERMS
    event = AuditEvent.objects.get(agent_id=agent.pk)
    assert (event.verb, event.actor_type, event.actor_id) == ("agent.registered", "user", "admin")


def test_it_refuses_an_invalid_spiffe_id_in_the_add_form(admin_client, sponsor, team):
    events_before = AuditEvent.objects.count()
    response = admin_client.post(
        ADD,
        {
            "spiffe_id": "spiffe://Example.test:443/agents/bot",
            "name": "Bad bot",
            "sponsor": sponsor.pk,
            "team": team.pk,
            "max_delegation_depth": 3,
        },
    )
    assert response.status_code == 200
    assert "spiffe_id" in response.context["adminform"].form.errors
    assert not Agent.objects.exists()
    assert AuditEvent.objects.count() == events_before


def test_it_changes_an_agent_through_the_audited_services(admin_client, fleet, sponsor, team):
    invoice = fleet["invoice"]
    change_url = f"{CHANGELIST}{invoice.pk}/change/"
    form = admin_client.get(change_url).content.decode()
    for fixed in ("spiffe_id", "oidc_trust_domain", "oidc_subject"):
        assert f'name="{fixed}"' not in form  # identity is fixed once registered
    response = admin_client.post(
        change_url,
        {
            "spiffe_id": "spiffe://example.test/agents/hijacked",
            "name": "Invoice bot v2",
            "description": "",
            "sponsor": sponsor.pk,
            "team": team.pk,
            "review_due": invoice.review_due.isoformat(),
            "max_delegation_depth": 1,
        },
    )
    assert response.status_code == 302
    invoice.refresh_from_db()
    assert invoice.spiffe_id == "spiffe://example.test/agents/invoice-bot"
    assert (invoice.name, invoice.max_delegation_depth) == ("Invoice bot v2", 1)
    event = AuditEvent.objects.filter(agent_id=invoice.pk).latest("sequence")
    assert (event.verb, event.actor_id) == ("agent.updated", "admin")
    assert event.data["changes"]["name"] == {"from": "Invoice bot", "to": "Invoice bot v2"}


def test_it_suspends_selected_agents_with_an_audited_bulk_action(admin_client, fleet):
    chosen = [fleet["invoice"], fleet["research"]]
    response = act(admin_client, "suspend_agents", chosen)
    assert response.status_code == 302
    for agent in chosen:
        agent.refresh_from_db()
        assert agent.status == Agent.Status.SUSPENDED
        assert verbs_for(agent)[-1] == "agent.suspended"
        event = AuditEvent.objects.filter(agent_id=agent.pk).latest("sequence")
        assert event.actor_id == "admin"
        assert event.data["reason"] == "admin action by admin"
    messages = [str(m) for m in admin_client.get(CHANGELIST).context["messages"]]
    assert "2 agent(s) suspended." in messages


def test_it_reactivates_selected_agents_with_an_audited_bulk_action(admin_client, fleet):
    refund = fleet["refund"]
    response = act(admin_client, "reactivate_agents", [refund])
    assert response.status_code == 302
    refund.refresh_from_db()
    assert refund.status == Agent.Status.ACTIVE
    assert verbs_for(refund)[-1] == "agent.reactivated"


def test_it_reports_an_agent_a_bulk_action_cannot_change(admin_client, fleet):
    refund = agent_retire(agent=fleet["refund"], actor=Actor.system("test"))
    response = act(admin_client, "reactivate_agents", [refund])
    assert response.status_code == 302
    messages = [str(m) for m in admin_client.get(CHANGELIST).context["messages"]]
    assert any("cannot become active" in message for message in messages)
    assert "0 agent(s) reactivated." in messages
    refund.refresh_from_db()
    assert refund.status == Agent.Status.RETIRED


def test_it_reassigns_the_sponsor_through_an_intermediate_form(admin_client, fleet, sponsor):
    successor = UserFactory(username="successor")
    chosen = [fleet["invoice"], fleet["refund"]]

    form_page = act(admin_client, "reassign_sponsor", chosen)
    assert form_page.status_code == 200
    page = form_page.content.decode()
    assert "New sponsor for" in page
    assert "Invoice bot" in page and "Refund helper" in page
    assert all(
        agent.sponsor == sponsor for agent in Agent.objects.filter(pk__in=[a.pk for a in chosen])
    )

    applied = act(admin_client, "reassign_sponsor", chosen, apply="Reassign", sponsor=successor.pk)
    assert applied.status_code == 302
    for agent in chosen:
        agent.refresh_from_db()
        assert agent.sponsor == successor
        assert set(get_user_perms(successor, agent)) == SPONSOR_PERMS
        assert list(get_user_perms(sponsor, agent)) == []
        event = AuditEvent.objects.filter(agent_id=agent.pk).latest("sequence")
        assert event.verb == "agent.sponsor_reassigned"
        assert (event.actor_id, event.data) == (
            "admin",
            {
                "from": "sponsor",
                "to": "successor",
                "approve_for_agent": {"granted_to": ["successor"], "revoked_from": ["sponsor"]},
            },
        )
    assert fleet["research"].sponsor.username == "carol"


def test_it_shows_the_form_again_when_no_sponsor_is_chosen(admin_client, fleet, sponsor):
    response = act(admin_client, "reassign_sponsor", [fleet["invoice"]], apply="Reassign")
    assert response.status_code == 200
    assert response.context["form"].errors["sponsor"]
    fleet["invoice"].refresh_from_db()
    assert fleet["invoice"].sponsor == sponsor
    assert verbs_for(fleet["invoice"]) == ["agent.registered"]


def test_it_keeps_audit_events_read_only_in_admin(admin_client, fleet):
    event = AuditEvent.objects.filter(agent_id=fleet["invoice"].pk).first()
    changelist = admin_client.get("/admin/audit/auditevent/")
    assert changelist.status_code == 200
    assert "agent.registered" in changelist.content.decode()
    assert "/admin/audit/auditevent/add/" not in changelist.content.decode()
    assert admin_client.get("/admin/audit/auditevent/add/").status_code == 403
    change_url = f"/admin/audit/auditevent/{event.pk}/change/"
    detail = admin_client.get(change_url)
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()
    assert admin_client.post(change_url, {"verb": "forged"}).status_code == 403
    delete_url = f"/admin/audit/auditevent/{event.pk}/delete/"
    assert admin_client.get(delete_url).status_code == 403
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    bulk_delete = admin_client.post(
        "/admin/audit/auditevent/",
        {"action": "delete_selected", ACTION_CHECKBOX_NAME: [event.pk], "post": "yes"},
    )
    assert bulk_delete.status_code in (200, 302)
    assert AuditEvent.objects.get(pk=event.pk).verb == "agent.registered"


@pytest.mark.parametrize("url", [CHANGELIST, ADD, "/admin/audit/auditevent/"])
def test_it_sends_a_person_without_staff_access_to_the_login(client, outsider, url):
    client.force_login(outsider)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_it_sends_an_anonymous_visitor_to_the_login(client, fleet):
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    response = act(client, "suspend_agents", [fleet["invoice"]])
    assert response.status_code == 302
    fleet["invoice"].refresh_from_db()
    assert fleet["invoice"].status == Agent.Status.ACTIVE


def test_registering_a_resource_server_in_admin_is_audited(admin_client, fleet, sponsor, team):
    invoice = fleet["invoice"]
    change_url = f"{CHANGELIST}{invoice.pk}/change/"
    fields = {
        "name": invoice.name,
        "description": "",
        "sponsor": sponsor.pk,
        "team": team.pk,
        "review_due": invoice.review_due.isoformat(),
        "max_delegation_depth": invoice.max_delegation_depth,
    }
    no_audience = admin_client.post(
        change_url, {**fields, "kind": "resource_server", "introspection_audiences": "[]"}
    )
    assert no_audience.status_code == 200
    assert "introspection_audiences" in no_audience.context["adminform"].form.errors
    response = admin_client.post(
        change_url,
        {**fields, "kind": "resource_server", "introspection_audiences": '["payments-db"]'},
    )
    assert response.status_code == 302
    invoice.refresh_from_db()
    assert invoice.is_resource_server and invoice.introspection_audiences == ["payments-db"]
    event = AuditEvent.objects.filter(agent_id=invoice.pk).latest("sequence")
    assert (event.verb, event.actor_id) == ("agent.updated", "admin")
    assert event.data["changes"] == {
        "kind": {"from": "agent", "to": "resource_server"},
        "introspection_audiences": {"from": [], "to": ["payments-db"]},
    }
    # A post of the form without the role fields (an older script) keeps the role.
    assert admin_client.post(change_url, {**fields, "name": "Gateway"}).status_code == 302
    invoice.refresh_from_db()
    assert (invoice.name, invoice.kind) == ("Gateway", "resource_server")
    assert invoice.introspection_audiences == ["payments-db"]


def add_form(sponsor, team, **changes):
    return {
        "spiffe_id": "spiffe://example.test/agents/new-bot",
        "name": "New bot",
        "sponsor": sponsor.pk,
        "team": team.pk,
        "max_delegation_depth": 3,
        **changes,
    }


def test_the_add_form_refuses_a_spiffe_id_of_an_unregistered_trust_domain(
    admin_client, sponsor, team
):
    TrustDomainFactory(name="example.test")
    events_before = AuditEvent.objects.count()
    response = admin_client.post(
        ADD, add_form(sponsor, team, spiffe_id="spiffe://unknown.example/agents/bot")
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["spiffe_id"]
    assert "The trust domain unknown.example is not registered" in errors[0]
    assert not Agent.objects.exists()
    assert AuditEvent.objects.count() == events_before


def test_the_add_form_refuses_an_inactive_sponsor(admin_client, team):
    TrustDomainFactory(name="example.test")
    gone = UserFactory(username="gone", is_active=False)
    response = admin_client.post(ADD, add_form(gone, team))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["sponsor"]
    assert "gone is inactive" in errors[0]
    assert not Agent.objects.exists()


def test_the_change_form_refuses_an_inactive_sponsor(admin_client, fleet, sponsor, team):
    invoice = fleet["invoice"]
    gone = UserFactory(username="gone", is_active=False)
    response = admin_client.post(
        f"{CHANGELIST}{invoice.pk}/change/",
        {
            "name": invoice.name,
            "sponsor": gone.pk,
            "team": team.pk,
            "max_delegation_depth": 3,
            "review_due": invoice.review_due.isoformat(),
        },
    )
    assert response.status_code == 200
    assert "gone is inactive" in response.context["adminform"].form.errors["sponsor"][0]
    invoice.refresh_from_db()
    assert invoice.sponsor == sponsor
    # Trying to hand a live agent to someone who cannot sign in is evidence (invariant 13).
    assert verbs_for(invoice) == ["agent.registered", "agent.ownership_refused"]


def test_the_reassign_action_refuses_an_inactive_sponsor(admin_client, fleet, sponsor):
    gone = UserFactory(username="gone", is_active=False)
    response = act(
        admin_client, "reassign_sponsor", [fleet["invoice"]], apply="Reassign", sponsor=gone.pk
    )
    assert response.status_code == 200
    assert "gone is inactive" in response.context["form"].errors["sponsor"][0]
    fleet["invoice"].refresh_from_db()
    assert fleet["invoice"].sponsor == sponsor
    assert verbs_for(fleet["invoice"]) == ["agent.registered"]


def test_agents_are_never_deleted_in_admin(admin_client, fleet):
    invoice = fleet["invoice"]
    assert admin_client.get(f"{CHANGELIST}{invoice.pk}/delete/").status_code == 403
    response = admin_client.get(CHANGELIST)
    actions = dict(response.context["action_form"].fields["action"].choices)
    assert "delete_selected" not in actions and "retire_agents" in actions
    refused = act(admin_client, "delete_selected", [invoice], post="yes")
    assert Agent.objects.filter(pk=invoice.pk).exists(), refused.status_code


def test_it_retires_selected_agents_with_an_audited_bulk_action(admin_client, fleet):
    chosen = [fleet["invoice"], fleet["refund"]]
    response = act(admin_client, "retire_agents", chosen)
    assert response.status_code == 302
    for agent in chosen:
        agent.refresh_from_db()
        assert agent.status == Agent.Status.RETIRED
        assert verbs_for(agent)[-1] == "agent.retired"
    assert fleet["research"].status == Agent.Status.ACTIVE
