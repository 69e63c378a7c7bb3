"""Drift flags in Django admin: a read-only list filtered by kind, agent and date, each row
linked to its grant, agent and request page. Flags are raised through the agent API."""

import html
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.models import DriftFlag, Grant
from tests.approvals.conftest import submit
from tests.approvals.test_drift import call
from tests.factories import AgentFactory, UserFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/approvals/driftflag/"


@pytest.fixture
def flags(agent, agent_api, privileges, signer, sponsor, team):
    """The invoice bot strays in target; a second agent in action."""
    from tests.approvals.test_delegation import client_for

    other = AgentFactory(
        spiffe_id="spiffe://example.test/agents/ledger-writer",
        name="Ledger writer",
        sponsor=sponsor,
        team=team,
    )
    other_api = client_for(signer, other)
    grant_target = submit(agent_api).json()["grant"]["id"]
    grant_action = submit(other_api).json()["grant"]["id"]
    target = call(agent_api, grant_target, target="payroll 2026-11").json()["drift"]["flag"]
    action = call(other_api, grant_action, target="invoices 2026-11", action="write").json()
    return {
        "target": DriftFlag.objects.get(pk=target),
        "action": DriftFlag.objects.get(pk=action["drift"]["flag"]),
        "agents": (agent, other),
    }


def shown(page: str) -> set[int]:
    return {int(pk) for pk in re.findall(r'href="/admin/approvals/driftflag/(\d+)/change/', page)}


def test_it_lists_every_flag_with_links_to_its_grant_agent_and_request(client, admin_user, flags):
    client.force_login(admin_user)
    page = client.get(LIST).content.decode()
    assert shown(page) == {flags["target"].pk, flags["action"].pk}
    flag = flags["target"]
    grant = Grant.objects.get(pk=flag.grant_id)
    assert f'href="/admin/approvals/grant/{grant.pk}/change/">Grant #{grant.pk}' in page
    assert f'href="/admin/agents/agent/{grant.agent_id}/change/">Invoice' in page
    assert f'href="/requests/{grant.access_request_id}/">request #' in page
    assert "Target outside the intent" in page and "payroll 2026-11" in page
    assert "Action the privilege does not cover" in page
    detail = client.get(f"{LIST}{flag.pk}/change/").content.decode()
    assert "drift-flags" in detail and f"Grant #{grant.pk}" in detail


def test_it_filters_by_kind_agent_and_date(client, admin_user, flags):
    client.force_login(admin_user)
    assert shown(client.get(f"{LIST}?kind=target").content.decode()) == {flags["target"].pk}
    assert shown(client.get(f"{LIST}?kind=action").content.decode()) == {flags["action"].pk}
    assert shown(client.get(f"{LIST}?kind=burst").content.decode()) == set()
    _, other = flags["agents"]
    by_agent = client.get(f"{LIST}?grant__agent__id__exact={other.pk}").content.decode()
    assert shown(by_agent) == {flags["action"].pk}
    # The agent filter offers only agents that have flags, not the whole estate.
    quiet = AgentFactory(spiffe_id="spiffe://example.test/agents/quiet", name="Quiet agent")
    sidebar = client.get(LIST).content.decode()
    assert f"grant__agent__id__exact={other.pk}" in sidebar
    assert f"grant__agent__id__exact={quiet.pk}" not in sidebar
    # The date filter's own "Today" link, then a day that has no flags.
    today_link = re.search(r'href="(\?created_at__gte=[^"]+)"[^>]*>Today', sidebar).group(1)
    dated = client.get(LIST + html.unescape(today_link)).content.decode()
    assert shown(dated) == {flags["target"].pk, flags["action"].pk}
    tomorrow = (timezone.now() + timedelta(days=1)).isoformat()
    later = client.get(LIST, {"created_at__gte": tomorrow}).content.decode()
    assert shown(later) == set()
    today = timezone.now().date()
    hierarchy = f"{LIST}?created_at__year={today.year}&created_at__month={today.month}"
    assert len(shown(client.get(hierarchy).content.decode())) == 2


def test_it_is_read_only(client, admin_user, flags):
    client.force_login(admin_user)
    flag = flags["target"]
    assert client.get(f"{LIST}add/").status_code == 403
    assert client.post(f"{LIST}{flag.pk}/change/", {"tool": "edited"}).status_code == 403
    assert client.post(f"{LIST}{flag.pk}/delete/", {"post": "yes"}).status_code == 403
    page = client.get(f"{LIST}{flag.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    flag.refresh_from_db()
    assert flag.tool == "sql.select"
    assert DriftFlag.objects.count() == 2


def test_staff_without_the_view_permission_see_nothing(client, flags):
    client.force_login(UserFactory(username="helpdesk", is_staff=True))
    assert client.get(LIST).status_code == 403
    assert client.get(f"{LIST}{flags['target'].pk}/change/").status_code == 403
