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
