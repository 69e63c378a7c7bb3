from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tests.factories import AgentFactory, PrivilegeFactory, ResourceServerFactory


@pytest.fixture
def privileges(db):
    # A transactional test's flush empties every table, the shipped policy set included.
    from approvals.models import Policy, PolicySetState
    from approvals.policy import DEFAULT_POLICY_TEXT, DRIFT_DEFAULT_TEXT

    Policy.objects.get_or_create(name="default", defaults={"text": DEFAULT_POLICY_TEXT})
    Policy.objects.get_or_create(
        name="drift-default", defaults={"kind": "drift", "text": DRIFT_DEFAULT_TEXT}
    )
    PolicySetState.objects.get_or_create(id=1)
    read = PrivilegeFactory(resource="payments-db", action="read", risk="low")
    write = PrivilegeFactory(resource="payments-db", action="write", risk="high")
    refund = PrivilegeFactory(resource="payments-api", action="refund", risk="medium")
    admin = PrivilegeFactory(
        resource="prod-cluster", action="admin", risk="critical", max_duration_seconds=900
    )
    return {"read": read, "write": write, "refund": refund, "admin": admin}


@pytest.fixture
def resource_server_api(db, trust_domain, signer, sponsor, team):
    """The payments database's gateway: a workload that introspects tokens."""
    server = ResourceServerFactory(
        spiffe_id="spiffe://example.test/resource-servers/payments-db",
        name="payments-db gateway",
        sponsor=sponsor,
        team=team,
        introspection_audiences=["payments-db"],
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(server.spiffe_id)}")
    return client


def intent(**overrides):
    return {
        "action": "reconcile invoices",
        "target": "invoices 2026-11",
        "justification": "3 invoices do not match the ledger.",
        **overrides,
    }


def submit(client, privilege="payments-db:read", *, duration=600, task_id="task-1", **extra):
    body = {
        "privilege": privilege,
        "task_id": task_id,
        "duration_seconds": duration,
        "intent": intent(),
        **extra,
    }
    return client.post("/api/v1/requests", body, format="json")


def person_client(user):
    client = APIClient(enforce_csrf_checks=False)
    client.force_login(user)
    return client


def decide(user, request_id, verdict="approve", comment="decided in a test"):
    return person_client(user).post(
        f"/api/v1/requests/{request_id}/decisions",
        {"verdict": verdict, "comment": comment},
        format="json",
    )


def long_grants(privilege, count: int, *, due_in: timedelta) -> list[int]:
    """Grants issued a day ago whose expiry now comes within `due_in` (past, if negative),
    never enqueued."""
    from approvals.models import AccessRequest, Grant

    agent = AgentFactory()
    issued = timezone.now() - timedelta(days=1)
    requests = AccessRequest.objects.bulk_create(
        AccessRequest(
            agent=agent,
            privilege=privilege,
            task_id=f"long-{n}",
            intent={"action": "read", "target": "ledger", "justification": "long job"},
            duration_seconds=86400 + int(due_in.total_seconds()),
            status=AccessRequest.Status.APPROVED,
            policy_outcome=AccessRequest.Outcome.AUTO_APPROVE,
            policy_ids=["test"],
            approvals_required=1,
            created_at=issued,
            decided_at=issued,
            decision_deadline=issued + timedelta(hours=1),
        )
        for n in range(count)
    )
    grants = Grant.objects.bulk_create(
        Grant(
            agent=agent,
            privilege=privilege,
            access_request=access_request,
            task_id=access_request.task_id,
            scope=privilege.name,
            issued_at=issued,
            expires_at=issued + timedelta(seconds=access_request.duration_seconds),
        )
        for access_request in requests
    )
    return [grant.pk for grant in grants]
