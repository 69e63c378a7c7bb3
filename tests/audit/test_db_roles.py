"""The database refuses what the app's role must never do to the evidence log.

PostgreSQL: a statement trigger refuses TRUNCATE, and the app runs under a role that owns no
table (`setup_db_roles`), so it cannot switch the triggers off, TRUNCATE, UPDATE or DELETE.
SQLite (the embedded default) has neither TRUNCATE nor roles: its DELETE triggers stand in."""

import io
import uuid
from contextlib import contextmanager

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEvent
from audit.services import Actor, checkpoint_publish, record, verify_chain
from tests.factories import AuditEventFactory

pytestmark = pytest.mark.django_db

AUDIT_TABLES = ["audit_auditevent", "audit_auditchainhead", "audit_auditcheckpoint"]


def refused(statement: str, params=()) -> str:
    """Run a statement that must fail; return the database's message (nothing is changed)."""
    with (
        pytest.raises(DatabaseError) as failure,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, params)
    return str(failure.value)


@pytest.mark.parametrize("table", AUDIT_TABLES)
def test_a_plain_truncate_of_an_audit_table_is_refused(table):
    AuditEventFactory()
    checkpoint_publish()
    before = AuditEvent.objects.count()
    if connection.vendor == "postgresql":
        assert f"{table} is append-only: TRUNCATE refused" in refused(f"TRUNCATE {table}")
    else:  # SQLite: DELETE without WHERE is its TRUNCATE, and the events table refuses it
        assert "append-only: DELETE refused" in refused("DELETE FROM audit_auditevent")
    assert AuditEvent.objects.count() == before
    assert verify_chain().ok


@contextmanager
def as_role(role: str):
    with connection.cursor() as cursor:
        cursor.execute(f'SET ROLE "{role}"')
        try:
            yield
        finally:
            cursor.execute("RESET ROLE")


@pytest.fixture
def app_role():
    """A fresh login-less role granted by `setup_db_roles`, created inside the test's
    transaction (so it disappears with it)."""
    role = f"custody_app_{uuid.uuid4().hex[:12]}"
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE ROLE "{role}" NOLOGIN')
    return role


def test_the_dml_only_role_cannot_touch_the_evidence(app_role):
    if connection.vendor != "postgresql":
        with pytest.raises(CommandError, match="PostgreSQL only"):
            call_command("setup_db_roles", "--app-role", app_role)
        return
    out = io.StringIO()
    call_command("setup_db_roles", "--app-role", app_role, stdout=out)
    assert "INSERT and SELECT only" in out.getvalue()
    event = AuditEventFactory()
    checkpoint_publish()

    with as_role(app_role):
        # What the app does keeps working: append evidence, read it, publish a checkpoint.
        appended = record(actor=Actor.system(), verb="test.as-app-role")
        assert verify_chain().ok
        assert checkpoint_publish().document["sequence"] == appended.sequence

        assert "must be owner" in refused(
            "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only"
        )
        assert "must be owner" in refused("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        assert "must be owner" in refused(
            "DROP TRIGGER audit_event_append_only ON audit_auditevent"
        )
        for table in AUDIT_TABLES:
            assert "permission denied" in refused(f"TRUNCATE {table}")
            assert "permission denied" in refused(f"DELETE FROM {table}")
        assert "permission denied" in refused(
            "UPDATE audit_auditevent SET verb = 'forged' WHERE sequence = %s", [event.sequence]
        )
        assert "permission denied" in refused("UPDATE audit_auditcheckpoint SET hash = 'x'")
        assert "permission denied" in refused("UPDATE audit_auditchainhead SET id = 2")
        assert "permission denied" in refused("SET session_replication_role = replica")
        assert "permission denied" in refused("CREATE TABLE audit_shadow (id int)")

    assert AuditEvent.objects.get(pk=event.pk).verb == event.verb
    assert verify_chain().ok


def test_setup_db_roles_refuses_a_role_that_owns_the_tables():
    if connection.vendor != "postgresql":
        with pytest.raises(CommandError, match="PostgreSQL only"):
            call_command("setup_db_roles", "--app-role", "anyone")
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        owner = cursor.fetchone()[0]
    with pytest.raises(CommandError, match="could disable the audit triggers"):
        call_command("setup_db_roles", "--app-role", owner)
    with pytest.raises(CommandError, match="There is no database role 'nobody_here'"):
        call_command("setup_db_roles", "--app-role", "nobody_here")
