from django.db import migrations

# The row trigger of 0002 does not fire on TRUNCATE: one statement-level trigger per audit table
# refuses it (PostgreSQL only; SQLite has no TRUNCATE). The table owner can still disable it,
# which is why the app runs under a role that owns nothing (README: "Database roles") and why
# signed checkpoints, not triggers, are what detect a rewrite.
AUDIT_TABLES = ["audit_auditevent", "audit_auditchainhead", "audit_auditcheckpoint"]

POSTGRESQL_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_refuse_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = TG_TABLE_NAME || ' is append-only: TRUNCATE refused',
        ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def trigger_name(table: str) -> str:
    return f"{table}_refuse_truncate"


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(POSTGRESQL_FUNCTION)
    for table in AUDIT_TABLES:
        schema_editor.execute(
            f"CREATE TRIGGER {trigger_name(table)} BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate()"
        )


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in AUDIT_TABLES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {trigger_name(table)} ON {table}")
    schema_editor.execute("DROP FUNCTION IF EXISTS audit_refuse_truncate()")


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_checkpoint")]

    operations = [migrations.RunPython(create_triggers, drop_triggers)]
