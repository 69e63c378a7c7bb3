from django.db import migrations

# The chain head's row lock is held from the moment an append takes it until the caller's
# transaction commits. Done from Python, that critical section was three round trips (advance
# the head, insert the events, store the last hash) with the hashing in between, and a writer
# descheduled between them kept every other writer waiting (bench/sweep.py measured it). This
# function does the whole append in one statement on the server: lock and advance the head,
# chain and insert the events, store the last hash. The hash is the same SHA-256 of the same
# canonical JSON (`AuditEvent.canonical_payload`): Python sends each event's payload split
# around the values it fills in (the time the caller read from its clock, the previous hash
# and the sequence, known only under the lock), so verification does not change.
# SECURITY INVOKER: it runs with the app role's own rights (INSERT on events, UPDATE of the
# head's two columns). PostgreSQL only.
POSTGRESQL_FUNCTION = """
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
    at_text text;
BEGIN
    UPDATE audit_auditchainhead SET last_sequence = last_sequence + n WHERE id = 1
        RETURNING last_sequence, last_hash INTO last_seq, prev_hash;
    IF NOT FOUND THEN
        RETURN;  -- no head row (a database emptied wholesale): the caller creates it, retries
    END IF;
    at_text := to_char(appended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00';
    FOR i IN 1..n LOOP
        event_sequence := last_seq - n + i;
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
        ) RETURNING id INTO event_id;
        prev_hash := event_hash;
        RETURN NEXT;
    END LOOP;
    UPDATE audit_auditchainhead SET last_hash = prev_hash WHERE id = 1;
END;
$$;
"""


def create_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRESQL_FUNCTION)


def drop_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "DROP FUNCTION IF EXISTS audit_append(timestamptz, text[], text[], text[], text[], "
            "text[], bigint[], bigint[], bigint[], jsonb[])"
        )


class Migration(migrations.Migration):
    dependencies = [("audit", "0006_tool_call_agent_index")]

    operations = [migrations.RunPython(create_function, drop_function)]
