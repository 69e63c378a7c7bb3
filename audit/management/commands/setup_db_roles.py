"""Grant the app's database role what it needs and nothing more (README: "Database roles").

Run by the role that owns the tables (the one `migrate` runs as), after every migrate:

    python manage.py setup_db_roles --app-role custody_app

The app role gets SELECT/INSERT/UPDATE/DELETE on every table — also on tables later migrations
create, through ALTER DEFAULT PRIVILEGES — except the evidence log: INSERT and SELECT only on
events, checkpoint copies and chain checks, and UPDATE on the chain head's two columns. It owns
nothing, so it can neither disable the append-only triggers nor TRUNCATE, UPDATE or DELETE
evidence; it cannot alter or create tables either, nor detach or drop a partition of the
events, nor touch one by its name.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from psycopg import sql

from audit.partitions import partitions

APPEND_ONLY = ["audit_auditevent", "audit_auditcheckpoint", "audit_chaincheck"]
CHAIN_HEAD = "audit_auditchainhead"
READ_ONLY = ["django_migrations"]


class Command(BaseCommand):
    help = "Grant the app's DML-only database role its privileges (PostgreSQL; run as owner)."

    def add_arguments(self, parser):
        parser.add_argument("--app-role", default="custody_app", help="default: custody_app")

    def handle(self, *args, **options):
        if connection.vendor != "postgresql":
            raise CommandError("Database roles apply to PostgreSQL only.")
        app = options["app_role"]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT rolsuper, rolbypassrls, pg_has_role(%s, current_user, 'MEMBER') "
                "FROM pg_roles WHERE rolname = %s",
                [app, app],
            )
            row = cursor.fetchone()
            if row is None:
                raise CommandError(
                    f"There is no database role {app!r}: create it first "
                    f"(deploy/postgres/roles.sql), e.g. CREATE ROLE {app} LOGIN PASSWORD '…'."
                )
            if any(row):
                raise CommandError(
                    f"{app!r} is a superuser, bypasses row security or is (a member of) the "
                    "table owner: it could disable the audit triggers. Use a plain login role."
                )
            role = sql.Identifier(app)
            for statement in [
                "GRANT CONNECT ON DATABASE {database} TO {role}",
                "GRANT USAGE ON SCHEMA public TO {role}",
                # One transaction: the app never sees a moment without its privileges.
                "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
                "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
                "GRANT USAGE, SELECT ON SEQUENCES TO {role}",
            ]:
                cursor.execute(
                    sql.SQL(statement).format(
                        role=role, database=sql.Identifier(connection.settings_dict["NAME"])
                    )
                )
            for table in APPEND_ONLY:
                self._grant(cursor, table, role, "SELECT, INSERT")
            self._grant(cursor, CHAIN_HEAD, role, "SELECT, UPDATE (last_sequence, last_hash)")
            for table in READ_ONLY:
                self._grant(cursor, table, role, "SELECT")
            # Partitions of the events (PostgreSQL): rows are reached through the parent,
            # whose grants apply; by its own name a partition grants the app nothing (the
            # owner's audit_partition_create revokes the same from each new one).
            for partition in partitions():
                cursor.execute(
                    sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(partition.name), role)
                )
        self.stdout.write(
            f"{app}: DML on Custody's tables; on the evidence log INSERT and SELECT only, "
            f"UPDATE of the chain head; no ownership, TRUNCATE, ALTER or trigger control."
        )

    @staticmethod
    def _grant(cursor, table: str, role, privileges: str) -> None:
        name = sql.Identifier(table)
        cursor.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(name, role))
        cursor.execute(sql.SQL(f"GRANT {privileges} ON {{}} TO {{}}").format(name, role))  # noqa: S608
