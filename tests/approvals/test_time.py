"""Deadlines, escalation, expiry notices, extensions and cascades, with the clock moved."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from approvals.models import AccessRequest, Grant
from approvals.services import access_request_submit
from approvals.tasks import sweep_expired_grants, sweep_request_deadlines
from audit.models import AuditEvent
from tests.approvals.conftest import decide, intent, person_client, submit
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db


def sweep():
    return sweep_request_deadlines.apply().get()


def now_as(agent, signer):
    """An API client for the agent with an SVID minted at the (travelled) current time."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
    return client


def test_a_silent_request_escalates_once_then_expires_at_its_deadline(
    agent_api, privileges, sponsor, agent, signer
):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    # The clocks start at submission (not at the test's start: a loaded machine may take more
    # than the one second of slack this test allows).
    start = AccessRequest.objects.get(pk=request_id).decision_deadline - timedelta(seconds=3600)
    with time_machine.travel(start + timedelta(seconds=1799), tick=False):
        assert sweep()["escalated"] == 0
    with time_machine.travel(start + timedelta(seconds=1801), tick=False):
        assert sweep()["escalated"] == 1
        assert sweep()["escalated"] == 0
        assert (
            now_as(agent, signer).get(f"/api/v1/requests/{request_id}").json()["status"]
            == "pending"
        )
    with time_machine.travel(start + timedelta(seconds=3601), tick=False):
        assert sweep()["expired"] == 1
        assert sweep()["expired"] == 0
        assert (
            now_as(agent, signer).get(f"/api/v1/requests/{request_id}").json()["status"]
            == "expired"
        )
        assert decide(sponsor, request_id).status_code == 409
    assert (
        AuditEvent.objects.filter(access_request_id=request_id, verb="request.escalated").count()
        == 1
    )
    assert (
        AuditEvent.objects.filter(access_request_id=request_id, verb="request.expired").count() == 1
    )


def test_the_deadline_is_enforced_at_the_check_without_any_sweep(
    agent_api, privileges, agent, signer
):
    start = timezone.now()
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    with time_machine.travel(start + timedelta(seconds=3601), tick=False):
        assert (
            now_as(agent, signer).get(f"/api/v1/requests/{request_id}").json()["status"]
            == "expired"
        )


def test_a_decided_request_never_escalates(agent_api, privileges, sponsor):
    start = timezone.now()
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    decide(sponsor, request_id)
    with time_machine.travel(start + timedelta(seconds=1900), tick=False):
        assert sweep()["escalated"] == 0


def test_the_grants_clock_starts_at_the_final_approval(agent_api, privileges, sponsor):
    start = timezone.now()
    request_id = submit(agent_api, "payments-api:refund", duration=600).json()["id"]
    with time_machine.travel(start + timedelta(seconds=900), tick=False):
        decide(sponsor, request_id)
        grant = Grant.objects.get(access_request_id=request_id)
        assert grant.issued_at == start + timedelta(seconds=900)
        assert grant.expires_at == grant.issued_at + timedelta(seconds=600)


def test_a_long_grant_warns_ten_minutes_before_its_end_once(agent_api, privileges, sponsor):
    request_id = submit(agent_api, "payments-db:read", duration=3600).json()["id"]
    decide(sponsor, request_id)
    grant = Grant.objects.get(access_request_id=request_id)
    with time_machine.travel(grant.expires_at - timedelta(seconds=601), tick=False):
        assert sweep()["expiry_notices"] == 0
    with time_machine.travel(grant.expires_at - timedelta(seconds=599), tick=False):
        assert sweep()["expiry_notices"] == 1
        assert sweep()["expiry_notices"] == 0
    assert AuditEvent.objects.filter(grant_id=grant.pk, verb="grant.expiry_notice").count() == 1


def test_a_short_grant_gets_no_expiry_notice(agent_api, privileges):
    grant_id = submit(agent_api, duration=900).json()["grant"]["id"]
    grant = Grant.objects.get(pk=grant_id)
    with time_machine.travel(grant.expires_at - timedelta(seconds=60), tick=False):
        assert sweep()["expiry_notices"] == 0


def test_a_parent_expiring_revokes_its_descendants_in_one_transaction(
    agent_api, privileges, agent, sponsor, team
):
    parent = Grant.objects.get(pk=submit(agent_api, duration=600).json()["grant"]["id"])
    helper = AgentFactory(
        spiffe_id="spiffe://example.test/agents/helper", sponsor=sponsor, team=team
    )
    child_request = access_request_submit(
        agent=helper,
        privilege_name="payments-db:read",
        task_id=parent.task_id,
        duration_seconds=600,
        intent=intent(),
        parent_grant=parent,
    ).access_request
    decide(sponsor, child_request.pk)
    child = Grant.objects.get(access_request=child_request)
    assert child.parent_id == parent.pk
    assert child.expires_at == parent.expires_at  # a delegation never outlives its parent

    with time_machine.travel(parent.expires_at + timedelta(seconds=1), tick=False):
        assert sweep_expired_grants.apply().get() == 1
    parent.refresh_from_db()
    child.refresh_from_db()
    assert (parent.revoke_reason, child.revoke_reason) == ("expired", "cascade")
    assert parent.revoked_at == child.revoked_at
    sequences = list(
        AuditEvent.objects.filter(
            grant_id__in=[parent.pk, child.pk], verb__in=["grant.expired", "grant.revoked"]
        ).values_list("sequence", flat=True)
    )
    assert sequences[1] == sequences[0] + 1


def test_an_extension_is_a_new_request_bounded_by_the_first_grant(agent_api, privileges, sponsor):
    first = submit(agent_api, duration=600).json()["grant"]
    too_long = agent_api.post(
        f"/api/v1/grants/{first['id']}/extend",
        {"duration_seconds": 3601, "intent": intent()},
        format="json",
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "extension_exceeds_maximum"

    asked = agent_api.post(
        f"/api/v1/grants/{first['id']}/extend",
        {"duration_seconds": 900, "intent": intent()},
        format="json",
    )
    assert asked.status_code == 201
    assert asked.json()["status"] == "pending"  # never a silent renewal
    first_issued_at = Grant.objects.get(pk=first["id"]).issued_at
    # Approved late, with 300 s of the privilege's hour left: the grant gets those 300 s, not
    # the 900 asked for, because the bound counts from the first grant, not from the approval.
    with time_machine.travel(first_issued_at + timedelta(seconds=3300), tick=False):
        assert decide(sponsor, asked.json()["id"]).json()["status"] == "approved"
    extension = Grant.objects.get(access_request_id=asked.json()["id"])
    assert AccessRequest.objects.get(pk=asked.json()["id"]).extension_of_id == first["id"]
    assert extension.issued_at == first_issued_at + timedelta(seconds=3300)
    assert extension.expires_at == first_issued_at + timedelta(seconds=3600)


def test_expiry_and_notifications_run_on_separate_queues():
    from config.celery import app

    app.loader.import_default_modules()  # the tasks a worker registers at start

    def queue(name):
        assert name in app.tasks, f"{name} is not a registered task"
        return app.amqp.router.route({}, name)["queue"].name

    assert queue("approvals.tasks.expire_grant") == "expiry"
    assert queue("approvals.tasks.sweep_expired_grants") == "sweeps"
    notifications = sorted(name for name in app.tasks if name.startswith("approvals.tasks.notify"))
    assert notifications == [
        "approvals.tasks.notify_agent_flagged",
        "approvals.tasks.notify_eligibility_request_changed",
        "approvals.tasks.notify_eligibility_request_pending",
        "approvals.tasks.notify_ephemeral",
        "approvals.tasks.notify_grant_drifted",
        "approvals.tasks.notify_grant_expiring",
        "approvals.tasks.notify_request_changed",
        "approvals.tasks.notify_request_escalated",
        "approvals.tasks.notify_request_pending",
        "approvals.tasks.notify_review",
    ]
    for name in notifications:
        assert queue(name) == "notifications", name
    assert queue("agents.tasks.sweep_agent_lifecycle") == "sweeps"


def test_back_to_back_fresh_requests_stop_being_automatic_past_the_cumulative_limit(
    privileges, sponsor, agent, signer, settings
):
    """A privilege's maximum means something: fresh task ids do not renew it forever."""
    settings.CUSTODY_CUMULATIVE_FACTOR = 1  # payments-db:read: 3600 s automatic per window
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        client = now_as(agent, signer)
        for n in range(6):  # 6 × 600 s = 3600 s: still within the limit
            assert submit(client, duration=600, task_id=f"fresh-{n}").json()["status"] == "approved"
        body = submit(client, duration=600, task_id="fresh-6").json()
    assert body["status"] == "pending"
    assert body["decision"]["policies"] == ["cumulative-limit-needs-people"]
    reason = body["decision"]["reason"]
    assert "held payments-db:read for 1 h in the last 1 day;" in reason
    assert "that is 1 h 10 min, over the 1 h that may be granted" in reason
    # The approver sees why it came to them.
    page = person_client(sponsor).get(f"/requests/{body['id']}/")
    assert "held payments-db:read for 1 h in the last 1 day" in page.content.decode()

    # Completing a task early counts only the time it was held.
    with time_machine.travel(start + timedelta(days=1, seconds=601), tick=False):
        client = now_as(agent, signer)
        for n in range(7):
            body = submit(client, duration=600, task_id=f"next-day-{n}").json()
            assert body["status"] == "approved", (n, body["decision"])
            completed = client.post(f"/api/v1/grants/{body['grant']['id']}/complete")
            assert completed.status_code == 200
