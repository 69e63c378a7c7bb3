"""Django's `flush`, able to empty the append-only evidence log on SQLite as well.

On PostgreSQL flush uses TRUNCATE, which the row trigger does not see; on SQLite it issues
DELETE, which the append-only triggers refuse. Emptying the whole database is a deliberate
operator act (and what the test runner does between transactional tests), so here the SQLite
triggers are lifted for the flush and put back in the same transaction.
"""

from django.core.management.commands import flush
from django.db import connections, transaction

AUDIT_TABLE = "audit_auditevent"


class Command(flush.Command):
    def handle(self, **options):
        connection = connections[options["database"]]
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
