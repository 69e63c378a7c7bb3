"""Django's `flush`, able to empty the append-only evidence log.

On PostgreSQL flush uses TRUNCATE, which statement triggers on the audit tables refuse; on
SQLite it issues DELETE, which the append-only triggers refuse. Emptying the whole database is a
deliberate operator act (and what the test runner does between transactional tests), so here
the triggers are lifted for the flush and put back in the same transaction — which only the
tables' owner can do: the app's DML-only role cannot (README: "Database roles").
"""

from django.core.management.commands import flush
from django.db import connections, transaction

AUDIT_TABLE = "audit_auditevent"


class Command(flush.Command):
    def handle(self, **options):
        connection = connections[options["database"]]
        if connection.vendor == "postgresql":
            return self._handle_postgresql(connection, **options)
        if connection.vendor != "sqlite":
            return super().handle(**options)
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s",
                [AUDIT_TABLE],
            )
            triggers = cursor.fetchall()
            for name, _ in triggers:
                cursor.execute(f'DROP TRIGGER "{name}"')
            super().handle(**options)
            for _, sql in triggers:
                cursor.execute(sql)

    def _handle_postgresql(self, connection, **options):
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(
                "SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
                "WHERE tgname LIKE %s AND NOT tgisinternal",
                ["%\\_refuse\\_truncate"],
            )
            triggers = cursor.fetchall()
            for table, name in triggers:
                cursor.execute(f'ALTER TABLE {table} DISABLE TRIGGER "{name}"')
            super().handle(**options)
            for table, name in triggers:
                cursor.execute(f'ALTER TABLE {table} ENABLE TRIGGER "{name}"')
