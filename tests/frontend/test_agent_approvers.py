"""The agent page: who may approve for the agent; backup approvers added and removed there by
people holding 'manage approvers', through the audited service."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from agents.models import BackupApprover
from approvals.models import AccessRequest
from audit.models import AuditEvent
from tests.approvals.conftest import decide, submit
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def page(agent) -> str:
    return f"/agents/{agent.pk}/"


def add_url(agent) -> str:
    return f"/agents/{agent.pk}/approvers/add/"


def remove_url(agent, person) -> str:
    return f"/agents/{agent.pk}/approvers/{person.pk}/remove/"


def verbs(agent) -> list[str]:
    return list(
        AuditEvent.objects.filter(agent_id=agent.pk, verb__startswith="approvers.")
        .order_by("sequence")
        .values_list("verb", flat=True)
    )


@pytest.fixture
def keeper(db):
    """Manages approvers (and sees every agent); not the agent's sponsor."""
    person = UserFactory(username="keeper")
    person.user_permissions.add(
        *Permission.objects.filter(codename__in=["manage_approvers", "view_agent"])
    )
    return person


def test_a_manager_adds_a_backup_approver_who_can_then_approve_and_removes_them(
    web, agent, agent_api, privileges, keeper
):
    deputy = UserFactory(username="deputy")
    client = web(keeper)
    shown = client.get(page(agent)).content.decode()
    assert "Add backup approver" in shown
    assert "No backup approvers." in shown

    response = client.post(add_url(agent), {"username": "deputy"})
    assert response.status_code == 302
    assert BackupApprover.objects.get(agent=agent, user=deputy).added_by == keeper
    assert f'id="backup-{deputy.pk}"' in client.get(page(agent)).content.decode()
    assert verbs(agent) == ["approvers.backup_added"]
    first = submit(agent_api, "payments-api:refund", task_id="t-1").json()["id"]
    assert decide(deputy, first).json()["status"] == "approved"

    assert client.post(remove_url(agent, deputy)).status_code == 302
    assert verbs(agent) == ["approvers.backup_added", "approvers.backup_removed"]
    second = submit(agent_api, "payments-api:refund", task_id="t-2").json()["id"]
    assert decide(deputy, second).status_code in (403, 404)
    assert AccessRequest.objects.get(pk=second).status == "pending"


def test_a_manager_cannot_add_themselves(web, agent, keeper):
    response = web(keeper).post(add_url(agent), {"username": "keeper"})
    assert response.status_code == 403
    assert "Nobody can give themselves the right to approve" in response.content.decode()
    assert not BackupApprover.objects.exists()
    assert verbs(agent) == ["approvers.change_refused"]


def test_the_sponsor_sees_the_approvers_but_may_not_change_them(
    web, agent, sponsor, keeper, backup_approver
):
    client = web(sponsor)
    shown = client.get(page(agent)).content.decode()
    assert f'id="backup-{backup_approver.pk}"' in shown
    assert "Add backup approver" not in shown
    friend = UserFactory(username="friend")
    refused = client.post(add_url(agent), {"username": "friend"})
    assert refused.status_code == 403
    assert "manage approvers" in refused.content.decode()
    assert not BackupApprover.objects.filter(user=friend).exists()
    assert not friend.has_perm("agents.approve_for_agent", agent)
    assert verbs(agent)[-1] == "approvers.change_refused"


def test_an_outsider_gets_404_everywhere(web, agent, outsider, keeper):
    deputy = UserFactory(username="deputy")
    web(keeper).post(add_url(agent), {"username": "deputy"})
    before = AuditEvent.objects.count()
    client = web(outsider)
    assert client.get(page(agent)).status_code == 404
    assert client.post(add_url(agent), {"username": "outsider"}).status_code == 404
    assert client.post(remove_url(agent, deputy)).status_code == 404
    assert BackupApprover.objects.filter(agent=agent, user=deputy).exists()
    assert AuditEvent.objects.count() == before


def test_it_answers_bad_input_with_4xx(web, agent, keeper):
    client = web(keeper)
    unknown = client.post(add_url(agent), {"username": "nobody-by-that-name"})
    assert unknown.status_code == 400
    assert "no active person" in unknown.content.decode()
    assert client.post(add_url(agent), {}).status_code == 400
    stranger = UserFactory(username="stranger")
    assert client.post(remove_url(agent, stranger)).status_code == 404
    assert client.get(add_url(agent)).status_code == 405
    assert client.get("/agents/999999/").status_code == 404
    assert verbs(agent) == []


def test_the_forms_need_the_csrf_token(agent, keeper):
    client = Client(enforce_csrf_checks=True)
    client.force_login(keeper)
    assert client.post(add_url(agent), {"username": "deputy"}).status_code == 403
    shown = client.get(page(agent)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', shown).group(1)
    UserFactory(username="deputy")
    accepted = client.post(add_url(agent), {"username": "deputy", "csrfmiddlewaretoken": token})
    assert accepted.status_code == 302
