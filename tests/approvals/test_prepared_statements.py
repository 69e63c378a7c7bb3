"""On PostgreSQL the hot paths' wide statements are prepared once per connection and then only
executed (core/prepared.py); with CUSTODY_DB_PREPARED_STATEMENTS off (a transaction-pooling
PgBouncer) nothing is prepared, and on SQLite there is nothing to prepare. The answers are the
same every way."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.approvals.conftest import submit

pytestmark = pytest.mark.django_db

# Submitting: the agent's authentication, the privilege with its toxic pairs, the agent lock,
# the decision's reads; introspecting: the resource server's authentication, the grant's read.
HOT_STATEMENTS = 6


def submit_and_introspect(agent_api, resource_server_api, task_id: str):
    """The statements one submission and one introspection ran, and what they answered."""
    with CaptureQueriesContext(connection) as captured:
        body = submit(agent_api, "payments-db:read", task_id=task_id).json()
        answer = resource_server_api.post(
            "/api/v1/introspect", {"token": body["grant"]["access_token"]}, format="json"
        ).json()
    statements = [query["sql"] for query in captured.captured_queries]
    return (body["status"], answer["active"]), statements


def starting(statements, word):
    return [sql for sql in statements if sql.startswith(f"{word} custody_")]


def test_each_hot_statement_is_planned_once_per_connection_then_only_executed(
    agent_api, resource_server_api, privileges
):
    first, statements = submit_and_introspect(agent_api, resource_server_api, "prepared-1")
    again, statements_again = submit_and_introspect(agent_api, resource_server_api, "prepared-2")
    assert first == again == ("approved", True)
    if connection.vendor != "postgresql":
        assert not starting(statements + statements_again, "EXECUTE")
        return
    # The agent's and the resource server's authentication are one statement: five in all, each
    # prepared at most once (an earlier test on this connection may have prepared them).
    assert len(starting(statements, "PREPARE")) <= HOT_STATEMENTS - 1
    assert starting(statements_again, "PREPARE") == []
    executed = starting(statements_again, "EXECUTE")
    assert len(executed) == HOT_STATEMENTS
    names = {sql.split()[1] for sql in executed}
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        assert names <= {name for (name,) in cursor.fetchall()}


def test_with_prepared_statements_off_nothing_is_prepared_and_the_answers_hold(
    agent_api, resource_server_api, privileges, settings
):
    settings.CUSTODY_DB_PREPARED_STATEMENTS = False
    answers, statements = submit_and_introspect(agent_api, resource_server_api, "unprepared")
    assert answers == ("approved", True)
    assert not [sql for sql in statements if sql.startswith(("PREPARE", "EXECUTE"))]
