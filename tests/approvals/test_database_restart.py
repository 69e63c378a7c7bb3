"""A database restart under the API: a JSON 503 with Retry-After (never Django's HTML "Server
Error (500)"), and a long poll outlives the connection the database dropped under it.

"A restart", as clients see it: on PostgreSQL their backends are terminated and new connections
refused (`ALLOW_CONNECTIONS false`); on SQLite the database file cannot be opened."""

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from rest_framework.test import APIClient

from approvals.models import Grant
from tests.approvals.conftest import person_client, submit

pytestmark = pytest.mark.django_db(transaction=True)


def _admin_connection():
    settings_dict = connection.settings_dict
    return psycopg.connect(
        host=settings_dict.get("HOST") or "127.0.0.1",
        port=settings_dict.get("PORT") or 5432,
        user=settings_dict.get("USER") or "postgres",
        password=settings_dict.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    )


def drop_connection(raw, backend_pid=None) -> None:
    """The database ends this connection under its holder, as a restart does."""
    if connection.vendor == "postgresql":
        with _admin_connection() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
    else:
        raw.close()


@contextmanager
def database_restarting():
    name = connection.settings_dict["NAME"]
    if connection.vendor == "postgresql":
        with _admin_connection() as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )
            try:
                yield
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                connection.close()
        return
    connection.close()
    path = Path(name)
    away = path.with_name(path.name + ".away")
    path.rename(away)
    path.mkdir()  # sqlite3 cannot open a directory: "unable to open database file"
    try:
        yield
    finally:
        path.rmdir()
        away.rename(path)
        connection.close()


def restart_database_in_background(down_seconds: float) -> threading.Thread:
    """The database goes away now and comes back after `down_seconds`, in another thread."""
    down = threading.Event()
    connection.close()  # this thread's own (Django's connections are per thread)

    def restart():
        with database_restarting():
            down.set()
            time.sleep(down_seconds)

    thread = threading.Thread(target=restart)
    thread.start()
    assert down.wait(10)
    return thread


def assert_unavailable(response):
    assert response.status_code == 503, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "service_unavailable"
    assert int(response["Retry-After"]) > 0


def test_an_agent_call_while_the_database_restarts_is_a_json_503(agent_api, privileges):
    client = APIClient(raise_request_exception=False)
    client._credentials = agent_api._credentials
    assert client.get("/api/v1/grants").status_code == 200
    with database_restarting():
        assert_unavailable(client.get("/api/v1/grants"))
        assert_unavailable(client.post("/api/v1/requests", {}, format="json"))
    assert client.get("/api/v1/grants").status_code == 200


def test_a_persons_api_call_failing_before_the_view_is_a_json_503(sponsor, agent, privileges):
    """Here the session lookup in a middleware fails, before DRF: Django's handler500."""
    client = person_client(sponsor)
    client.raise_request_exception = False
    with database_restarting():
        assert_unavailable(client.get("/api/v1/requests/1"))


def test_a_long_poll_outlives_the_connection_the_database_dropped(agent_api, privileges):
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    connection.ensure_connection()
    raw = connection.connection
    backend_pid = None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend_pid = cursor.fetchone()[0]
    dropper = threading.Timer(0.8, drop_connection, args=(raw, backend_pid))
    dropper.start()
    try:
        response = agent_api.get(f"/api/v1/requests/{request_id}?wait=2")
        replaced = connection.connection is not raw
    finally:
        dropper.join()
        connection.close()  # whatever happened, the next test gets a fresh connection
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "pending"
    assert replaced  # the database dropped it, and the poll went on without it


def test_a_sweep_during_a_database_restart_waits_for_it_and_ends_the_due_grants(
    agent_api, privileges
):
    from approvals.tasks import sweep_expired_grants

    grant_id = submit(agent_api, duration=1).json()["grant"]["id"]
    time.sleep(1.1)
    restart = restart_database_in_background(0.4)
    try:
        assert sweep_expired_grants() == 1  # a beat-scheduled sweep, as a worker runs it
    finally:
        restart.join()
        connection.close()
    grant = Grant.objects.get(pk=grant_id)
    assert grant.revoke_reason == "expired"
