"""Flood control: an agent may keep at most CUSTODY_MAX_PENDING_PER_AGENT requests waiting for
people; one more is a 429 with Retry-After and a `request.throttled` audit event, and the cap
holds when the agent submits from many threads at once."""

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from approvals.models import AccessRequest, Grant
from audit.models import AuditEvent
from tests.approvals.conftest import intent, submit
from tests.approvals.test_delegation import (  # noqa: F401 - fixtures
    client_for,
    exchange,
    foreign_d,
    other_sponsor,
    root_token,
)

CAP = 3


@pytest.fixture(autouse=True)
def _cap(settings):
    settings.CUSTODY_MAX_PENDING_PER_AGENT = CAP


def pending(agent) -> int:
    return AccessRequest.objects.filter(agent=agent, status="pending").count()


def test_one_more_pending_request_than_the_cap_is_a_429(agent_api, agent, privileges):
    for n in range(CAP):
        response = submit(agent_api, "payments-db:write", task_id=f"task-{n}")
        assert response.status_code == 201, response.content
        assert response.json()["status"] == "pending"

    refused = submit(agent_api, "payments-db:write", task_id="task-flood")

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "too_many_pending_requests"
    assert f"has {CAP} requests waiting" in error["message"]
    assert f"at most {CAP}" in error["message"]
    # Until the earliest pending request's deadline (an hour by default), never 0.
    assert 1 <= int(refused["Retry-After"]) <= privileges["write"].decision_deadline_seconds + 1
    assert pending(agent) == CAP
    event = AuditEvent.objects.get(verb="request.throttled")
    assert event.agent_id == agent.pk
    assert event.data["cap"] == CAP
    assert event.data["privilege_name"] == "payments-db:write"


def test_requests_policy_decides_at_once_are_not_capped(agent_api, agent, privileges):
    for n in range(CAP):
        submit(agent_api, "payments-db:write", task_id=f"task-{n}")

    automatic = submit(agent_api, "payments-db:read", task_id="task-read")

    assert automatic.status_code == 201
    assert automatic.json()["status"] == "approved"


def test_a_decided_or_cancelled_request_frees_its_place(agent_api, agent, privileges):
    ids = [
        submit(agent_api, "payments-db:write", task_id=f"task-{n}").json()["id"] for n in range(CAP)
    ]
    assert submit(agent_api, "payments-db:write", task_id="task-x").status_code == 429

    assert agent_api.post(f"/api/v1/requests/{ids[0]}/cancel").status_code == 200

    assert submit(agent_api, "payments-db:write", task_id="task-x").status_code == 201


def test_an_extension_counts_against_the_cap(agent_api, agent, privileges):
    grant = submit(agent_api, "payments-db:read", duration=600).json()["grant"]
    for n in range(CAP):
        submit(agent_api, "payments-db:write", task_id=f"task-{n}")

    refused = agent_api.post(
        f"/api/v1/grants/{grant['id']}/extend",
        {"duration_seconds": 900, "intent": intent()},
        format="json",
    )

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_pending_requests"
    assert "Retry-After" in refused
    assert AuditEvent.objects.filter(verb="request.throttled", agent_id=agent.pk).count() == 1


def test_a_delegation_counts_against_the_sub_agents_cap(agent_api, foreign_d, signer, privileges):  # noqa: F811
    """A delegation across sponsors waits for the sub-agent's sponsor: it is one more request in
    the sub-agent's queue."""
    d_api = client_for(signer, foreign_d)
    for n in range(CAP):
        assert submit(d_api, "payments-db:write", task_id=f"task-{n}").status_code == 201
    token_a, _ = root_token(agent_api)

    refused = exchange(agent_api, token_a, signer.act(foreign_d.spiffe_id), as_json=True)

    assert refused.status_code == 429, refused.content
    assert refused.json()["custody_error"]["code"] == "too_many_pending_requests"
    assert "Retry-After" in refused
    assert pending(foreign_d) == CAP
    event = AuditEvent.objects.get(verb="request.throttled")
    assert event.agent_id == foreign_d.pk
    assert event.data["delegated_by"] == "spiffe://example.test/agents/invoice-bot"


def test_a_refused_delegation_spends_one_place_of_the_audit_budget(
    agent_api,
    foreign_d,  # noqa: F811
    signer,
    privileges,
    settings,
):
    settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE = 2
    d_api = client_for(signer, foreign_d)
    for n in range(CAP):
        assert submit(d_api, "payments-db:write", task_id=f"task-{n}").status_code == 201
    token_a, _ = root_token(agent_api)

    for _ in range(2):
        refused = exchange(agent_api, token_a, signer.act(foreign_d.spiffe_id), as_json=True)
        assert refused.status_code == 429, refused.content

    assert AuditEvent.objects.filter(verb="request.throttled", agent_id=foreign_d.pk).count() == 2


def test_throttled_events_are_budgeted_per_agent(agent_api, agent, privileges, settings):
    settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE = 2
    for n in range(CAP):
        submit(agent_api, "payments-db:write", task_id=f"task-{n}")

    statuses = [submit(agent_api, "payments-db:write").status_code for _ in range(5)]

    assert statuses == [429] * 5
    assert AuditEvent.objects.filter(verb="request.throttled").count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_submitters_never_exceed_the_cap(agent, signer, privileges):
    """Eight threads of one agent submit at once, again and again: each wave of submitters
    sees the same count before any commits, so without serialization they would overshoot."""
    threads_count, per_thread = 8, 4
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads_count)

    def run(name: str) -> None:
        client = APIClient(raise_request_exception=False)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
        try:
            barrier.wait()
            for sequence in range(per_thread):
                response = submit(client, "payments-db:write", task_id=f"{name}-{sequence}")
                with lock:
                    statuses.append(response.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(f"t{n}",)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(set(statuses)) == [201, 429], statuses
    assert statuses.count(201) == CAP
    assert pending(agent) == CAP
    assert not Grant.objects.filter(agent=agent).exists()
