"""DATABASE_REPLICA_URL: the audit and posture pages read evidence and history from the replica;
introspection, submissions and every decision read only the primary. A real gunicorn whose
`replica` alias is the test database itself under another application_name, so PostgreSQL
(pg_stat_activity) tells which alias ran what."""

import json
import os
import urllib.request

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from tests import workers
from tests.approvals.conftest import intent
from tests.factories import ResourceServerFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    # A read replica is PostgreSQL's (settings refuse DATABASE_REPLICA_URL beside SQLite, which
    # tests/config/test_settings.py checks): this runs wherever the suite runs on PostgreSQL, as
    # CI does; `make test` on the embedded SQLite default has no replica to route to.
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="a read replica needs PostgreSQL (CI runs it)"
    ),
]

REPLICA_APP = f"custody-replica-{os.getpid()}"


def replica_backends() -> dict:
    """The replica alias's sessions: pid -> (when its last statement started, the statement)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, query_start, query FROM pg_stat_activity WHERE application_name = %s",
            [REPLICA_APP],
        )
        return {pid: (started, query) for pid, started, query in cursor.fetchall()}


def call(url, *, body=None, bearer=None, cookie=None):
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method="POST" if body else "GET",
    )
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    if cookie:
        request.add_header("Cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


@pytest.fixture
def server():
    web = workers.Gunicorn(
        env={
            "DATABASE_REPLICA_URL": f"{workers.test_database_url()}?application_name={REPLICA_APP}"
        }
    )
    yield web
    web.stop()


def test_read_only_pages_read_the_replica_and_decisions_never_do(
    server, agent, signer, privileges, sponsor, team, admin_user
):
    gateway = ResourceServerFactory(sponsor=sponsor, team=team)
    gateway_bearer = signer.mint(gateway.spiffe_id)
    agent_bearer = signer.mint(agent.spiffe_id)

    def submit(task_id):
        status, body = call(
            f"{server.url}/api/v1/requests",
            body={
                "privilege": "payments-db:read",
                "task_id": task_id,
                "duration_seconds": 600,
                "intent": intent(),
            },
            bearer=agent_bearer,
        )
        assert status == 201, body
        return json.loads(body)["grant"]["access_token"]

    def introspect(token):
        status, body = call(
            f"{server.url}/api/v1/introspect", body={"token": token}, bearer=gateway_bearer
        )
        assert status == 200 and json.loads(body)["active"] is True, body

    token = submit("task-1")
    for _ in range(4):
        introspect(token)
    assert replica_backends() == {}  # a decision path never even opened the replica

    person = Client()
    person.force_login(admin_user)
    cookie = person.cookies[settings.SESSION_COOKIE_NAME].value
    status, page = call(f"{server.url}/audit/", cookie=cookie)
    assert status == 200 and b"grant.issued" in page
    after_audit = replica_backends()
    assert any("audit_auditevent" in query for _, query in after_audit.values()), after_audit

    status, _ = call(f"{server.url}/posture/", cookie=cookie)
    assert status == 200
    after_posture = replica_backends()
    assert after_posture != after_audit  # the posture page read the replica too

    token = submit("task-2")
    for _ in range(4):
        introspect(token)
    assert replica_backends() == after_posture  # no statement on the replica since
