import threading

import pytest
from django.db import connection
from guardian.shortcuts import assign_perm

from approvals.models import AccessRequest, Decision, Grant
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals.conftest import decide, submit
from tests.factories import UserFactory


@pytest.mark.django_db(transaction=True)
def test_twenty_racing_approvers_produce_exactly_one_grant(agent_api, privileges, agent):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    approvers = [UserFactory(username=f"approver-{n}") for n in range(20)]
    for approver in approvers:
        assign_perm("agents.approve_for_agent", approver, agent)
    barrier = threading.Barrier(len(approvers))
    statuses: list[int] = []

    def race(approver):
        try:
            barrier.wait()
            statuses.append(decide(approver, request_id).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=race, args=(a,)) for a in approvers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201] + [409] * 19
    assert Grant.objects.filter(access_request_id=request_id).count() == 1
    assert Decision.objects.filter(access_request_id=request_id).count() == 1
    assert AccessRequest.objects.get(pk=request_id).status == "approved"
    assert AuditEvent.objects.filter(verb="decision.refused").count() == 19
    assert verify_chain().ok


@pytest.mark.django_db(transaction=True)
def test_racing_submits_that_too_few_may_approve_are_each_escalated_once(
    agent_api, privileges, agent
):
    """Escalation at submit writes inside the submit's own transaction: ten submits at once,
    with the deadline sweep running beside them, escalate each request exactly once."""
    from approvals.tasks import sweep_request_deadlines

    barrier = threading.Barrier(11)
    statuses: list[int] = []

    def asks(n):
        try:
            barrier.wait()
            statuses.append(submit(agent_api, "payments-db:write", task_id=f"t-{n}").status_code)
        finally:
            connection.close()

    def sweeps():
        try:
            barrier.wait()
            for _ in range(5):
                sweep_request_deadlines()
        finally:
            connection.close()

    threads = [threading.Thread(target=asks, args=(n,)) for n in range(10)]
    threads.append(threading.Thread(target=sweeps))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [201] * 10
    requests = AccessRequest.objects.filter(agent=agent)
    assert requests.count() == 10
    assert not requests.filter(escalated_at__isnull=True).exists()
    escalations = AuditEvent.objects.filter(verb="request.escalated")
    assert escalations.count() == 10
    assert set(escalations.values_list("access_request_id", flat=True)) == set(
        requests.values_list("pk", flat=True)
    )
    assert all(e.data["why"] == "too_few_approvers" for e in escalations)
    assert verify_chain().ok
