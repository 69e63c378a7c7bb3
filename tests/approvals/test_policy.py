import importlib
import re

import pytest
from django.apps import apps as django_apps

from approvals.models import Grant, Policy, PolicyRevision
from approvals.policy import DEFAULT_POLICY_TEXT
from audit.models import AuditEvent
from tests.approvals.conftest import submit
from tests.factories import PolicyFactory

pytestmark = pytest.mark.django_db

FORBID_READS = """
@id("freeze-payments-reads")
@reason("Payments are frozen for the quarter close.")
forbid (principal, action, resource) when { resource.resource == "payments-db" };
"""


def post_reviewed(client, url, data):
    """Admin shows what a policy change would decide before keeping it: save twice."""
    shown = client.post(url, data)
    assert shown.status_code == 200, shown.content.decode()[:2000]
    reviewed = re.search(r'name="reviewed" value="([0-9a-f]+)"', shown.content.decode()).group(1)
    return client.post(url, {**data, "reviewed": reviewed})


def test_a_policy_added_in_admin_changes_the_next_decision(
    agent_api, privileges, client, admin_user
):
    assert submit(agent_api, task_id="before").json()["status"] == "approved"
    client.force_login(admin_user)
    response = post_reviewed(
        client,
        "/admin/approvals/policy/add/",
        {
            "name": "quarter-close",
            "description": "",
            "text": FORBID_READS,
            "enabled": "on",
            "revisions-TOTAL_FORMS": "0",
            "revisions-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    body = submit(agent_api, task_id="after").json()
    assert body["status"] == "denied"
    assert body["decision"]["policies"] == ["freeze-payments-reads"]
    assert body["decision"]["reason"] == "Payments are frozen for the quarter close."
    event = AuditEvent.objects.get(verb="policy.created")
    assert event.actor_id == "admin"


def test_editing_a_policy_versions_it_and_disabling_restores_the_old_answer(
    agent_api, privileges, client, admin_user
):
    freeze = PolicyFactory(name="quarter-close", text=FORBID_READS)
    assert submit(agent_api, task_id="a").json()["status"] == "denied"
    client.force_login(admin_user)
    response = post_reviewed(
        client,
        f"/admin/approvals/policy/{freeze.pk}/change/",
        {
            "name": "quarter-close",
            "description": "",
            "text": FORBID_READS,
            "revisions-TOTAL_FORMS": "1",
            "revisions-INITIAL_FORMS": "1",
            "revisions-0-id": str(freeze.revisions.get().pk),
            "revisions-0-policy": str(freeze.pk),
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    freeze.refresh_from_db()
    assert (freeze.version, freeze.enabled) == (2, False)
    assert list(PolicyRevision.objects.filter(policy=freeze).values_list("version", flat=True)) == [
        2,
        1,
    ]
    assert submit(agent_api, task_id="b").json()["status"] == "approved"


def test_admin_shows_cedars_error_for_an_invalid_policy(client, admin_user):
    client.force_login(admin_user)
    response = client.post(
        "/admin/approvals/policy/add/",
        {
            "name": "broken",
            "text": 'permit (principal, action, resource) when { resource.colour == "red" };',
            "enabled": "on",
            "revisions-TOTAL_FORMS": "0",
            "revisions-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    assert "Cedar says" in response.content.decode()
    assert "colour" in response.content.decode()
    assert not Policy.objects.filter(name="broken").exists()
    syntax = client.post(
        "/admin/approvals/policy/add/",
        {
            "name": "broken",
            "text": "permit (",
            "enabled": "on",
            "revisions-TOTAL_FORMS": "0",
            "revisions-INITIAL_FORMS": "0",
        },
    )
    assert "Cedar says" in syntax.content.decode()


def test_a_policy_that_errors_at_runtime_fails_closed(agent_api, privileges):
    # Valid against the schema, but the multiplication overflows at runtime: a forbid that
    # cannot evaluate must not silently let the request through.
    PolicyFactory(
        name="odd",
        text="""
        @id("overflowing-check")
        forbid (principal, action, resource)
        when { context.duration_seconds * 9223372036854775807 > 0 };
    """,
    )
    body = submit(agent_api).json()
    assert body["status"] == "denied"
    assert "fail closed" in body["decision"]["reason"]


def test_the_default_policy_set_ships_in_the_repo(db):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "approvals/policies/default.cedar"
    assert Policy.objects.get(name="default").text == shipped.read_text()


def test_the_toxic_pair_reason_moves_to_any_task_on_an_untouched_default_policy(privileges):
    migration = importlib.import_module("approvals.migrations.0006_toxic_pair_reason_any_task")
    policy = Policy.objects.get(name="default")
    shipped_before = DEFAULT_POLICY_TEXT.replace(migration.REASON, migration.PREVIOUS_REASON)
    assert shipped_before != DEFAULT_POLICY_TEXT
    Policy.objects.filter(pk=policy.pk).update(text=shipped_before)

    migration.ship_toxic_pair_reason(django_apps, None)
    policy.refresh_from_db()
    assert policy.text == DEFAULT_POLICY_TEXT
    assert "in any task" in policy.text
    assert PolicyRevision.objects.filter(policy=policy, version=policy.version).exists()
    assert AuditEvent.objects.filter(verb="policy.changed", actor_id="migration").exists()

    edited = "// edited by an admin\n" + shipped_before
    Policy.objects.filter(pk=policy.pk).update(text=edited)
    migration.ship_toxic_pair_reason(django_apps, None)
    assert Policy.objects.get(pk=policy.pk).text == edited


def test_a_token_refresh_evaluates_policy_again_and_ends_a_grant_it_no_longer_allows(
    agent_api, privileges
):
    grant_id = submit(agent_api, task_id="close").json()["grant"]["id"]
    assert agent_api.post(f"/api/v1/grants/{grant_id}/token").status_code == 200
    PolicyFactory(name="quarter-close", text=FORBID_READS)
    refused = agent_api.post(f"/api/v1/grants/{grant_id}/token")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "policy_denied"
    assert "frozen for the quarter close" in refused.json()["error"]["message"]
    grant = Grant.objects.get(pk=grant_id)
    assert grant.revoke_reason == "policy"
    assert AuditEvent.objects.filter(verb="grant.revoked", grant_id=grant_id).exists()
