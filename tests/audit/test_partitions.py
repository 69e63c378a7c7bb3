"""The evidence log partitioned by ranges of sequence (PostgreSQL; audit migration 0010): the
migration keeps the events and their chain, appends never fail for lack of a partition (a burst,
concurrent writers, the app's DML-only role), the app's role cannot detach, drop or write a
partition, and an archived partition is removed only against an archive of exactly its range,
after which the chain still verifies in full and incrementally.

SQLite keeps a plain table: the migration test runs there too, and removal is refused."""

import io
import json
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from audit.models import AuditChainHead, AuditEvent
from audit.partitions import partition_ahead, partitions
from audit.services import Actor, deferred_evidence, record, verify_chain
from audit.tasks import keep_audit_partition_ahead
from tests.audit.test_append import append_batches_at_once
from tests.audit.test_checkpoints import append, as_the_owner, publish, verify
from tests.audit.test_db_roles import as_role, refused


def plain_table(tmp_path) -> bool:
    """SQLite (the embedded default): a plain table, no partitions, nothing to archive by
    partition or remove; True there, so a PostgreSQL test ends after checking that much."""
    if connection.vendor == "postgresql":
        return False
    assert partitions() == []
    archive = tmp_path / "plain.jsonl"
    with pytest.raises(CommandError, match="not partitioned"):
        archive_partition(archive)
    archive.write_text("{}\n")
    with pytest.raises(CommandError, match="not partitioned"):
        drop(archive)
    return True


BEFORE = [("audit", "0009_audit_page_indexes")]
AFTER = [("audit", "0010_partition_by_sequence")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def small_partitions(size: int) -> None:
    """As the owner: the (empty) events table starts again with partitions of `size` events,
    so a test crosses a boundary after a few appends."""
    assert not AuditEvent.objects.exists()
    with connection.cursor() as cursor:
        for partition in partitions():
            cursor.execute(f'DROP TABLE "{partition.name}"')
        cursor.execute("UPDATE audit_auditchainhead SET partitioned_until = NULL")
        cursor.execute("SELECT audit_partition_ahead_by(%s)", [size])


def partition_of(sequence: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM audit_auditevent WHERE sequence = %s", [sequence]
        )
        return cursor.fetchone()[0]


def full_verification() -> str:
    return verify(full=True)


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_the_events_and_their_chain():
    AuditChainHead.objects.get_or_create(id=1)  # the code of today writes 0009's head row
    try:
        migrate(BEFORE)
        before = append(30)
        migrate(AFTER)

        assert full_verification().startswith("Audit chain intact: 30 events verified.")
        assert [
            (event.sequence, event.hash)
            for event in AuditEvent.objects.filter(sequence__lte=30).order_by("sequence")
        ] == [(event.sequence, event.hash) for event in before]
        if connection.vendor == "postgresql":
            # The old table is the first partition, the open one starts after its last event.
            assert [(p.name, p.from_sequence) for p in partitions()][:2] == [
                ("audit_auditevent_p1", 1),
                ("audit_auditevent_p31", 31),
            ]
            assert partitions()[0].to_sequence == 31
        assert publish().startswith("Checkpoint published at sequence 30")
        after = append(3)
        assert [event.sequence for event in after] == [31, 32, 33]
        if connection.vendor == "postgresql":
            assert partition_of(30) == "audit_auditevent_p1"
            assert partition_of(31) == "audit_auditevent_p31"
        assert verify().startswith("Audit chain intact: 3 events verified after the signed")
        assert full_verification().startswith("Audit chain intact: 33 events verified.")
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


@pytest.mark.django_db
def test_a_burst_past_the_newest_partition_creates_the_next_and_succeeds(tmp_path):
    if plain_table(tmp_path):
        return
    small_partitions(10)
    assert [(p.from_sequence, p.to_sequence) for p in partitions()] == [(1, 11)]

    with transaction.atomic(), deferred_evidence():
        for index in range(25):
            record(actor=Actor.system("burst"), verb="test.burst", data={"index": index})

    assert list(AuditEvent.objects.values_list("sequence", flat=True)) == list(range(1, 26))
    assert [p.from_sequence for p in partitions()][:2] == [1, 11]
    assert partitions()[-1].from_sequence > 25  # and one whole partition ahead again
    assert partition_of(10) == "audit_auditevent_p1"
    assert partition_of(11) == "audit_auditevent_p11"
    assert verify_chain().ok


WRITERS = 8
BATCHES = 4


@pytest.mark.django_db(transaction=True)
def test_concurrent_appenders_cross_a_partition_boundary_as_one_chain(tmp_path):
    if plain_table(tmp_path):
        return
    small_partitions(10)
    errors = append_batches_at_once(WRITERS, BATCHES)
    assert errors == []
    total = WRITERS * BATCHES * 3
    assert list(AuditEvent.objects.values_list("sequence", flat=True)) == list(range(1, total + 1))
    assert [p.from_sequence for p in partitions()][:2] == [1, 11]
    assert {partition_of(s) for s in (1, 10)} == {"audit_auditevent_p1"}
    assert {partition_of(s) for s in (11, total)} == {"audit_auditevent_p11"}
    report = verify_chain()
    assert report.ok, report
    assert report.verified == total


@pytest.mark.django_db
def test_the_app_role_appends_across_a_boundary_but_cannot_detach_drop_or_write_a_partition(
    tmp_path,
):
    if plain_table(tmp_path):
        return
    small_partitions(5)
    append(3)
    app_role = f"partition_app_{uuid.uuid4().hex[:12]}"  # in the test's transaction: rolled back
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE ROLE "{app_role}" NOLOGIN')
    call_command("setup_db_roles", "--app-role", app_role, stdout=io.StringIO())
    first = partitions()[0].name

    with as_role(app_role):
        # Past the newest partition: the owner's function creates the next, inside the append.
        for _ in range(4):
            record(actor=Actor.system("app"), verb="test.as_app_role")
        created = [p.name for p in partitions()]
        created_until = partitions()[-1].to_sequence

        table = "audit_auditevent"
        assert "must be owner" in refused(f"ALTER TABLE {table} DETACH PARTITION {first}")
        assert "must be owner" in refused(f"DROP TABLE {first}")
        assert "must be owner" in refused(f"ALTER TABLE {first} DISABLE TRIGGER USER")
        for partition in created:
            assert "permission denied" in refused(f"TRUNCATE {partition}")
            assert "permission denied" in refused(f"UPDATE {partition} SET verb = 'forged'")
            assert "permission denied" in refused(f"DELETE FROM {partition}")
            assert "permission denied" in refused(f"INSERT INTO {partition} SELECT * FROM {first}")
        assert "permission denied" in refused("SELECT audit_partition_create(900, 901)")
        assert "permission denied" in refused("SELECT audit_partition_ahead_by(1000000000)")
        assert partition_ahead() == created_until  # beat's call: no size of its own

    assert created[:2] == ["audit_auditevent_p1", "audit_auditevent_p6"]
    assert AuditEvent.objects.count() == 7
    assert verify_chain().ok


def archive_partition(out, which: str = "oldest") -> str:
    stdout = io.StringIO()
    call_command("archive_audit", "--partition", which, "--out", str(out), stdout=stdout)
    return stdout.getvalue()


def drop(archive) -> str:
    stdout = io.StringIO()
    call_command("drop_audit_partition", "--archive", str(archive), stdout=stdout)
    return stdout.getvalue()


@pytest.mark.django_db
def test_an_archived_partition_is_removed_and_what_remains_verifies(tmp_path, admin_client):
    if plain_table(tmp_path):
        return
    small_partitions(5)
    append(5)
    assert publish().startswith("Checkpoint published at sequence 5")  # the boundary
    append(3)
    path = tmp_path / "p1.jsonl"
    assert archive_partition(path).startswith("Archived events #1–#5 (5 events)")

    out = drop(path)

    assert out.startswith("Removed audit_auditevent_p1 (events #1–#5), archived in")
    assert [p.name for p in partitions()][0] == "audit_auditevent_p6"
    assert AuditEvent.objects.order_by("sequence").first().sequence == 6
    evidence = AuditEvent.objects.get(verb="audit.archived")
    assert evidence.sequence == 9
    assert {
        key: evidence.data[key] for key in ("partition", "first_sequence", "last_sequence")
    } == {
        "partition": "audit_auditevent_p1",
        "first_sequence": 1,
        "last_sequence": 5,
    }
    assert evidence.data["boundary_checkpoint"]["sequence"] == 5
    assert evidence.data["archive_sha256"] in out
    # The newest checkpoint is the boundary itself: both walks start there.
    assert full_verification().startswith(
        "Audit chain intact: 4 events verified after the signed checkpoint at sequence 5"
    )
    assert verify().startswith("Audit chain intact: 4 events verified after the signed")
    assert publish().startswith("Checkpoint published at sequence 9 (4 events verified")
    append(2)
    assert verify().startswith(
        "Audit chain intact: 2 events verified after the signed checkpoint at sequence 9"
    )
    assert full_verification().startswith("Audit chain intact: 6 events verified after the")
    # The archive still verifies alone and links to the first event that remains.
    stdout = io.StringIO()
    call_command("verify_audit", "--archive", str(path), stdout=stdout)
    assert "the database's event 6 links to it" in stdout.getvalue()

    page = admin_client.get("/audit/")
    assert page.status_code == 200
    assert [event.sequence for event in page.context["events"]] == list(range(11, 5, -1))
    assert "audit.archived" in page.content.decode()


@pytest.mark.django_db
def test_removing_more_events_than_were_archived_is_caught(tmp_path):
    if plain_table(tmp_path):
        return
    small_partitions(5)
    append(5)
    publish()
    append(3)
    path = tmp_path / "p1.jsonl"
    archive_partition(path)
    drop(path)
    with as_the_owner() as cursor:  # and then, quietly, the first event that remained
        cursor.execute("DELETE FROM audit_auditevent WHERE sequence = 6")

    for walk in (full_verification, verify):
        with pytest.raises(CommandError) as failure:
            walk()
        assert str(failure.value).startswith(
            "Audit chain broken at sequence 7: events before 7 are not in the database and no "
            "signed checkpoint at 6 vouches for them"
        )


@pytest.mark.django_db
def test_removal_is_refused_without_an_archive_of_exactly_the_oldest_partition(tmp_path):
    if plain_table(tmp_path):
        return
    small_partitions(5)
    append(5)
    publish()
    append(7)
    publish()
    good = tmp_path / "p1.jsonl"
    archive_partition(good)

    def refusal(path) -> str:
        with pytest.raises(CommandError) as failure:
            drop(path)
        return str(failure.value)

    # Edited: one event's content no longer matches its hash.
    lines = good.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["verb"] = "grant.revoked"
    bad = tmp_path / "edited.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], json.dumps(edited), *lines[3:]]) + "\n")
    assert "does not verify: sequence 2: content does not match its hash" in refusal(bad)
    # Cut short: no end checkpoint.
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:-1]) + "\n")
    assert "does not verify: the archive has no end" in refusal(short)
    # Not the partition's range: a calendar month's archive (events #1–#12 here).
    month = tmp_path / "month.jsonl"
    call_command(
        "archive_audit",
        "--month",
        AuditEvent.objects.get(sequence=1).occurred_at.strftime("%Y-%m"),
        "--out",
        str(month),
        stdout=io.StringIO(),
    )
    assert "covers #1–#12; the oldest partition, audit_auditevent_p1, holds #1–#5" in refusal(month)
    assert "is not a readable file" in refusal(tmp_path / "missing.jsonl")

    assert [p.name for p in partitions()][0] == "audit_auditevent_p1"
    assert AuditEvent.objects.count() == 12
    assert not AuditEvent.objects.filter(verb="audit.archived").exists()
    assert drop(good).startswith("Removed audit_auditevent_p1")


@pytest.mark.django_db
def test_a_partition_still_being_written_or_unsigned_is_not_archived(tmp_path):
    if plain_table(tmp_path):
        return
    small_partitions(5)
    append(3)
    with pytest.raises(CommandError, match="still being written"):
        archive_partition(tmp_path / "a.jsonl")
    append(4)  # past the first partition, but no checkpoint signed its end yet
    with pytest.raises(CommandError, match="No signed checkpoint at #5"):
        archive_partition(tmp_path / "b.jsonl")
    publish()
    assert archive_partition(tmp_path / "c.jsonl").startswith("Archived events #1–#5")


@pytest.mark.django_db
def test_beat_keeps_a_whole_partition_ahead_of_the_head(tmp_path):
    if plain_table(tmp_path):
        assert keep_audit_partition_ahead() is None
        return
    small_partitions(10)
    append(3)  # the head is inside the newest (and only) partition
    assert [(p.from_sequence, p.to_sequence) for p in partitions()] == [(1, 11)]

    assert keep_audit_partition_ahead() == 10011

    assert [(p.from_sequence, p.to_sequence) for p in partitions()] == [(1, 11), (11, 10011)]
    assert AuditChainHead.objects.get(id=1).partitioned_until == 10011
    assert keep_audit_partition_ahead() == 10011  # nothing more until the head enters it
    assert len(partitions()) == 2
