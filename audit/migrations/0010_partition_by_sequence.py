"""The evidence log partitioned by ranges of `sequence` on PostgreSQL (issue 17; the design and
its measurements: docs/audit-at-scale.md, "Partitioning").

- `sequence` is the primary key (the `id` column goes: nothing references it), because every
  key of a partitioned table must hold the partition column; UNIQUE(hash) and
  UNIQUE(previous_hash) go, as no index can be unique across partitions without the sequence.
- The existing table becomes the first partition, `FROM (1) TO (head + 1)`: its columns and
  indexes are kept (an index identical to the new parent's is adopted by ATTACH, not rebuilt;
  the UNIQUE(sequence) index serves as the primary key's), so the migration costs one scan that
  validates the range, not a copy of the rows. It runs holding the chain-head lock and an
  ACCESS EXCLUSIVE lock on the table: appends wait for it (a scan: seconds at 10M events).
- `audit_partition_ahead()` creates the next partitions. It is SECURITY DEFINER, owned by the
  owner that runs migrate, because the app's role (README, "Database roles") cannot create
  tables; it creates only the next range partitions of this one table (CREATE TABLE + ATTACH,
  which takes SHARE UPDATE EXCLUSIVE on the parent: reads and appends go on), puts the TRUNCATE
  trigger on each, and revokes whatever default privileges gave, so a partition cannot be
  written by name. Beat calls it to keep one partition ahead of the head; `audit_append` calls
  it when a burst would run past the newest partition, so an append never fails for lack of one.
- `audit_append` (0007) returns the sequence as `event_id` and hashes exactly as before.

SQLite (the embedded default) keeps a plain table: it is rebuilt for the new primary key, which
drops its triggers, so they are created again.
"""

from importlib import import_module

from django.db import migrations, models

TABLE = "audit_auditevent"

# Every partition of the events, with its range [from_sequence, to_sequence).
PARTITIONS_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_event_partitions()
RETURNS TABLE (partition_name text, from_sequence bigint, to_sequence bigint)
LANGUAGE sql STABLE SET search_path = {schema}, pg_temp AS $$
    SELECT c.relname::text, bounds[1]::bigint, bounds[2]::bigint
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid,
    LATERAL regexp_match(
        pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''?(-?\\d+)''?\\) TO \\(''?(-?\\d+)''?\\)'
    ) AS bounds
    WHERE i.inhparent = 'audit_auditevent'::regclass
    ORDER BY 2
$$;
"""

# Keep one whole partition ahead of the chain head (and, after a burst, cover the head first).
# A new partition holds about a month: the last 30 days' events, at least 10,000, or `size`
# events: choosing the size is the owner's (this function is not granted to anyone); the app's
# role calls the SECURITY DEFINER `audit_partition_ahead()` below, which cannot choose it.
AHEAD_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_partition_ahead_by(size bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = {schema}, pg_temp AS $$
DECLARE
    head_sequence bigint;
    stored bigint;
    head_found boolean;
    low bigint;
    newest_low bigint;
    newest_high bigint;
    span bigint := size;
    since bigint;
BEGIN
    IF span IS NOT NULL AND span < 1 THEN
        RAISE EXCEPTION 'audit_partition_ahead: size must be positive';
    END IF;
    SELECT last_sequence, partitioned_until INTO head_sequence, stored
        FROM audit_auditchainhead WHERE id = 1;
    head_found := FOUND;
    head_sequence := coalesce(head_sequence, 0);
    SELECT min(from_sequence), max(from_sequence), max(to_sequence)
        INTO low, newest_low, newest_high FROM audit_event_partitions();
    IF newest_low IS NOT NULL AND head_sequence < newest_low AND head_sequence >= low - 1
            AND (NOT head_found OR stored IS NOT DISTINCT FROM newest_high) THEN
        RETURN newest_high;  -- nothing to do: no lock taken
    END IF;
    -- Under the chain-head lock (an append calling this holds it already), so creators take
    -- turns and no append runs past what is being created.
    PERFORM 1 FROM audit_auditchainhead WHERE id = 1 FOR UPDATE;
    SELECT last_sequence INTO head_sequence FROM audit_auditchainhead WHERE id = 1;
    head_sequence := coalesce(head_sequence, 0);
    SELECT min(from_sequence), max(from_sequence), max(to_sequence)
        INTO low, newest_low, newest_high FROM audit_event_partitions();
    IF span IS NULL THEN
        SELECT sequence INTO since FROM audit_auditevent
            WHERE occurred_at >= now() - interval '30 days' ORDER BY occurred_at LIMIT 1;
        span := greatest(head_sequence - coalesce(since, head_sequence + 1) + 1, 10000);
    END IF;
    IF newest_low IS NULL THEN
        PERFORM audit_partition_create(1, greatest(1 + span, head_sequence + 1));
        low := 1;
        newest_low := 1;
        newest_high := greatest(1 + span, head_sequence + 1);
    ELSIF head_sequence < low - 1 THEN
        -- A chain started again below the oldest partition (only a flushed test database:
        -- a real head never goes back past archived and removed events).
        PERFORM audit_partition_create(1, low);
    END IF;
    WHILE head_sequence >= newest_low LOOP
        PERFORM audit_partition_create(newest_high, greatest(newest_high + span, head_sequence + 1));
        newest_low := newest_high;
        newest_high := greatest(newest_high + span, head_sequence + 1);
    END LOOP;
    UPDATE audit_auditchainhead SET partitioned_until = newest_high
        WHERE id = 1 AND partitioned_until IS DISTINCT FROM newest_high;
    RETURN newest_high;
END;
$$;
REVOKE ALL ON FUNCTION audit_partition_ahead_by(bigint) FROM PUBLIC;
CREATE OR REPLACE FUNCTION audit_partition_ahead() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
    SELECT audit_partition_ahead_by(NULL)
$$;
"""

# One empty partition: created alone, then attached (ATTACH takes SHARE UPDATE EXCLUSIVE on the
# parent, where CREATE TABLE ... PARTITION OF takes ACCESS EXCLUSIVE and would wait for every
# reader, a full verification included, with the chain-head lock held). The row trigger is
# cloned from the parent by ATTACH; the TRUNCATE trigger is not, so it is added here. Default
# privileges would give the app role DML on it by name: revoked (the parent's grants apply to
# rows reached through the parent).
CREATE_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_partition_create(from_sequence bigint, to_sequence bigint)
RETURNS text
LANGUAGE plpgsql SET search_path = {schema}, pg_temp AS $$
DECLARE
    name text := 'audit_auditevent_p' || from_sequence;
    grantee oid;
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE audit_auditevent)', name);
    EXECUTE format(
        'ALTER TABLE audit_auditevent ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
        name, from_sequence, to_sequence
    );
    EXECUTE format(
        'CREATE TRIGGER audit_auditevent_refuse_truncate BEFORE TRUNCATE ON %I '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate()', name
    );
    FOR grantee IN
        SELECT DISTINCT acl.grantee FROM pg_class c, aclexplode(c.relacl) acl
        WHERE c.oid = name::regclass AND acl.grantee <> c.relowner
    LOOP
        EXECUTE format(
            'REVOKE ALL ON %I FROM %s', name,
            CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(grantee)) END
        );
    END LOOP;
    RETURN name;
END;
$$;
REVOKE ALL ON FUNCTION audit_partition_create(bigint, bigint) FROM PUBLIC;
"""

# 0007's function, but the event id is its sequence (the primary key), and a burst that would
# run past the newest partition first has the owner's function create what it needs.
APPEND_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_append(
    appended_at timestamptz, heads text[], tails text[], actor_types text[], actor_ids text[],
    verbs text[], agent_ids bigint[], access_request_ids bigint[], grant_ids bigint[],
    datas jsonb[]
) RETURNS TABLE (
    event_id bigint, event_sequence bigint, event_at timestamptz, event_previous text,
    event_hash text
)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(verbs);
    last_seq bigint;
    prev_hash text;
    partitioned_until bigint;
    at_text text;
BEGIN
    UPDATE audit_auditchainhead SET last_sequence = last_sequence + n WHERE id = 1
        RETURNING last_sequence, last_hash, audit_auditchainhead.partitioned_until
        INTO last_seq, prev_hash, partitioned_until;
    IF NOT FOUND THEN
        RETURN;  -- no head row (a database emptied wholesale): the caller creates it, retries
    END IF;
    IF partitioned_until IS NULL OR last_seq >= partitioned_until THEN
        PERFORM audit_partition_ahead();
    END IF;
    at_text := to_char(appended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00';
    FOR i IN 1..n LOOP
        event_sequence := last_seq - n + i;
        event_id := event_sequence;
        event_at := appended_at;
        event_previous := prev_hash;
        event_hash := encode(sha256(convert_to(
            heads[i] || at_text || '","previous_hash":"' || prev_hash || '","sequence":'
            || event_sequence::text || tails[i], 'UTF8')), 'hex');
        INSERT INTO audit_auditevent (
            sequence, occurred_at, actor_type, actor_id, verb, agent_id, access_request_id,
            grant_id, data, previous_hash, hash
        ) VALUES (
            event_sequence, appended_at, actor_types[i], actor_ids[i], verbs[i], agent_ids[i],
            access_request_ids[i], grant_ids[i], datas[i], prev_hash, event_hash
        );
        prev_hash := event_hash;
        RETURN NEXT;
    END LOOP;
    UPDATE audit_auditchainhead SET last_hash = prev_hash WHERE id = 1;
END;
$$;
"""

ROW_TRIGGER = (
    "CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_auditevent "
    "FOR EACH ROW EXECUTE FUNCTION audit_event_refuse_change()"
)
TRUNCATE_TRIGGER = (
    "CREATE TRIGGER audit_auditevent_refuse_truncate BEFORE TRUNCATE ON audit_auditevent "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate()"
)

SQLITE_TRIGGERS = [
    "DROP TRIGGER IF EXISTS audit_event_refuse_update",
    "DROP TRIGGER IF EXISTS audit_event_refuse_delete",
    """
    CREATE TRIGGER audit_event_refuse_update BEFORE UPDATE ON audit_auditevent
    BEGIN SELECT RAISE(ABORT, 'audit_auditevent is append-only: UPDATE refused'); END
    """,
    """
    CREATE TRIGGER audit_event_refuse_delete BEFORE DELETE ON audit_auditevent
    BEGIN SELECT RAISE(ABORT, 'audit_auditevent is append-only: DELETE refused'); END
    """,
]


def _indexes(cursor, table: str) -> list[tuple[str, str | None, list[str]]]:
    """(index name, the constraint it backs or None, its columns) for every index of `table`."""
    cursor.execute(
        """
        SELECT i.relname, con.conname,
               array(SELECT a.attname FROM unnest(x.indkey) k
                     JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k)
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.conrelid = x.indrelid
        WHERE x.indrelid = %s::regclass
        """,
        [table],
    )
    return cursor.fetchall()


def _grants(cursor, table: str) -> list[tuple[str, str]]:
    """(grantee, privilege) granted on `table` to anyone but its owner."""
    cursor.execute(
        "SELECT DISTINCT CASE WHEN acl.grantee = 0 THEN 'PUBLIC' "
        "ELSE quote_ident(pg_get_userbyid(acl.grantee)) END, acl.privilege_type "
        "FROM pg_class c, aclexplode(c.relacl) acl "
        "WHERE c.oid = %s::regclass AND acl.grantee <> c.relowner",
        [table],
    )
    return cursor.fetchall()


def partition_postgresql(apps, schema_editor):
    model = apps.get_model("audit", "AuditEvent")

    def execute(statement, params=None):  # None: the functions' `%I` are not placeholders
        schema_editor.execute(statement, params)

    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        schema = schema_editor.quote_name(cursor.fetchone()[0])
        # Lock order: the chain head, then the table (appends take them in that order).
        cursor.execute("SELECT last_sequence FROM audit_auditchainhead WHERE id = 1 FOR UPDATE")
        row = cursor.fetchone()
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"SELECT coalesce(max(sequence), 0) FROM {TABLE}")  # noqa: S608
        head = max(cursor.fetchone()[0], row[0] if row else 0)
        first = f"{TABLE}_p1"
        granted = _grants(cursor, TABLE)  # setup_db_roles's grants, for the parent
        # 1. The plain table, made fit to be the first partition.
        execute(f"DROP TRIGGER audit_event_append_only ON {TABLE}")
        execute(f"ALTER TABLE {TABLE} DROP COLUMN id")  # and its primary key
        for name, constraint, columns in _indexes(cursor, TABLE):
            if set(columns) & {"hash", "previous_hash"}:
                if constraint:
                    execute(f'ALTER TABLE {TABLE} DROP CONSTRAINT "{constraint}"')
                else:
                    execute(f'DROP INDEX "{name}"')
        execute(f"ALTER TABLE {TABLE} RENAME TO {first}")
        for name, _, _ in _indexes(cursor, first):  # the parent's indexes take Django's names
            execute(f'ALTER INDEX "{name}" RENAME TO "{("p1_" + name)[:63]}"')
        # 2. The partitioned table in its place: the model's own DDL and index names.
        sql, params = schema_editor.table_sql(model)
        execute(f"{sql} PARTITION BY RANGE (sequence)", params or None)
        for statement in schema_editor._model_indexes_sql(model):
            execute(statement)
        for grantee, _ in _grants(cursor, TABLE):  # what default privileges gave, then the old
            execute(f"REVOKE ALL ON {TABLE} FROM {grantee}")
        for grantee, privilege in granted:
            execute(f"GRANT {privilege} ON {TABLE} TO {grantee}")
        execute(ROW_TRIGGER)
        execute(TRUNCATE_TRIGGER)
        for function in (PARTITIONS_FUNCTION, CREATE_FUNCTION, AHEAD_FUNCTION, APPEND_FUNCTION):
            execute(function.format(schema=schema))
        # 3. The old rows become the first partition (a scan validates the range); an empty
        # table is dropped instead, and the first partition is sized like any other.
        if head:
            execute(
                f"ALTER TABLE {TABLE} ATTACH PARTITION {first} FOR VALUES FROM (1) TO ({head + 1})"
            )
            # What the app role was granted on the table it now has through the parent only:
            # by its name, the partition grants nothing (as audit_partition_create does).
            for grantee, _ in _grants(cursor, first):
                execute(f"REVOKE ALL ON {first} FROM {grantee}")
        else:
            execute(f"DROP TABLE {first}")
        cursor.execute("SELECT audit_partition_ahead()")


def unpartition_postgresql(apps, schema_editor):
    """Back to 0009's plain table: the rows are copied (ids numbered in sequence order)."""
    old_model = model_0009(schema_editor.connection)
    append_0007 = import_module("audit.migrations.0007_append_function").POSTGRESQL_FUNCTION

    def execute(statement, params=None):
        schema_editor.execute(statement, params)

    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM audit_auditchainhead WHERE id = 1 FOR UPDATE")
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        granted = _grants(cursor, TABLE)
        execute(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_partitioned")
        execute(
            f"ALTER TABLE {TABLE}_partitioned RENAME CONSTRAINT {TABLE}_pkey TO {TABLE}_parted_pkey"
        )
        for name, constraint, _ in _indexes(cursor, f"{TABLE}_partitioned"):
            if not constraint:
                execute(f'DROP INDEX "{name}"')
        schema_editor.create_model(old_model)
        columns = ", ".join(
            field.column for field in old_model._meta.concrete_fields if field.name != "id"
        )
        execute(
            f"INSERT INTO {TABLE} ({columns}) "  # noqa: S608
            f"SELECT {columns} FROM {TABLE}_partitioned ORDER BY sequence"
        )
        execute(f"DROP TABLE {TABLE}_partitioned CASCADE")
        for grantee, _ in _grants(cursor, TABLE):
            execute(f"REVOKE ALL ON {TABLE} FROM {grantee}")
        for grantee, privilege in granted:
            execute(f"GRANT {privilege} ON {TABLE} TO {grantee}")
        execute(ROW_TRIGGER)
        execute(TRUNCATE_TRIGGER)
        execute("DROP FUNCTION audit_partition_ahead()")
        execute("DROP FUNCTION audit_partition_ahead_by(bigint)")
        execute("DROP FUNCTION audit_partition_create(bigint, bigint)")
        execute("DROP FUNCTION audit_event_partitions()")
        execute(append_0007)


def model_0009(connection):
    from django.db.migrations.loader import MigrationLoader

    state = MigrationLoader(connection).project_state(("audit", "0009_audit_page_indexes"))
    return state.apps.get_model("audit", "AuditEvent")


def sqlite_rebuild(model, schema_editor) -> None:
    """SQLite: the table rebuilt as `model` (Django's own table rebuild: copy, drop, rename),
    which drops its triggers: they are created again."""
    schema_editor._remake_table(model)
    for statement in SQLITE_TRIGGERS:
        schema_editor.execute(statement)


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        partition_postgresql(apps, schema_editor)
    elif vendor == "sqlite":  # the rows copied without `id`; sequence the primary key
        sqlite_rebuild(apps.get_model("audit", "AuditEvent"), schema_editor)


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        unpartition_postgresql(apps, schema_editor)
    elif vendor == "sqlite":  # `id` back, numbered as the sequence, for the rebuild to copy
        for statement in SQLITE_TRIGGERS[:2]:  # the UPDATE below is the migration's, not a rewrite
            schema_editor.execute(statement)
        schema_editor.execute("ALTER TABLE audit_auditevent ADD COLUMN id integer")
        schema_editor.execute("UPDATE audit_auditevent SET id = sequence")
        sqlite_rebuild(model_0009(schema_editor.connection), schema_editor)


MODEL_CHANGES = [
    migrations.RemoveField(model_name="auditevent", name="id"),
    migrations.AlterField(
        model_name="auditevent",
        name="hash",
        field=models.CharField(editable=False, max_length=64),
    ),
    migrations.AlterField(
        model_name="auditevent",
        name="previous_hash",
        field=models.CharField(editable=False, max_length=64),
    ),
    migrations.AlterField(
        model_name="auditevent",
        name="sequence",
        field=models.BigIntegerField(editable=False, primary_key=True, serialize=False),
    ),
]


class Migration(migrations.Migration):
    dependencies = [("audit", "0009_audit_page_indexes")]

    operations = [
        migrations.AddField(
            model_name="auditchainhead",
            name="partitioned_until",
            field=models.BigIntegerField(blank=True, editable=False, null=True),
        ),
        # The model changes; each database is changed by `forwards` below (Django's own
        # operations, one at a time on SQLite, would pass through a model without a primary key,
        # which Django fills with an implicit `id` the table no longer has).
        migrations.SeparateDatabaseAndState(state_operations=MODEL_CHANGES),
        migrations.RunPython(forwards, backwards),
    ]
