"""The evidence log: one unbroken hash chain, append-only, correct under concurrent writers."""

import io
import threading
from contextlib import contextmanager

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from audit.models import AuditChainHead, AuditEvent
from audit.services import Actor, record, verify_chain
from tests.factories import AuditEventFactory

pytestmark = pytest.mark.django_db


def verify_audit() -> str:
    out = io.StringIO()
    call_command("verify_audit", stdout=out)
    return out.getvalue()


def append(count: int) -> list[AuditEvent]:
    return [AuditEventFactory() for _ in range(count)]


@contextmanager
def append_only_guard_lifted():
    """What someone with DBA rights does before editing the log by hand."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")
            try:
                yield cursor
            finally:
                cursor.execute("SET LOCAL session_replication_role = origin")
            return
        cursor.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'trigger' AND tbl_name = 'audit_auditevent'"
        )
        triggers = cursor.fetchall()
        assert len(triggers) == 2, "the SQLite append-only triggers are missing"
        for name, _ in triggers:
            cursor.execute(f'DROP TRIGGER "{name}"')
        try:
            yield cursor
        finally:
            for _, sql in triggers:
                cursor.execute(sql)


def test_it_verifies_an_intact_chain_and_prints_the_count():
    append(7)
    total = AuditEvent.objects.count()
    assert total >= 7
    assert verify_audit().strip() == f"Audit chain intact: {total} events verified."


def test_it_links_each_event_to_the_one_before():
    first, second, third = append(3)
    assert second.sequence == first.sequence + 1
    assert third.sequence == second.sequence + 1
    assert second.previous_hash == first.hash
    assert third.previous_hash == second.hash
    assert len({first.hash, second.hash, third.hash}) == 3
    for event in (first, second, third):
        stored = AuditEvent.objects.get(pk=event.pk)
        assert stored.hash == stored.compute_hash() == event.hash


@pytest.mark.parametrize(
    ("column", "forged"),
    [("verb", "grant.revoked"), ("actor_id", "mallory"), ("agent_id", 4242)],
)
def test_it_detects_a_tampered_row_at_its_sequence(column, forged):
    events = append(6)
    target = events[3].sequence
    with append_only_guard_lifted() as cursor:
        cursor.execute(
            f"UPDATE audit_auditevent SET {column} = %s WHERE sequence = %s", [forged, target]
        )
    with pytest.raises(CommandError) as broken:
        verify_audit()
    assert str(broken.value) == (
        f"Audit chain broken at sequence {target}: content does not match its hash "
        f"({target - 1} events verified before it)."
    )


def test_it_detects_a_forger_who_rehashes_the_row_at_the_next_link():
    events = append(5)
    target = AuditEvent.objects.get(pk=events[2].pk)
    target.verb = "grant.revoked"
    rehashed = target.compute_hash()
    with append_only_guard_lifted() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET verb = %s, hash = %s WHERE sequence = %s",
            ["grant.revoked", rehashed, target.sequence],
        )
    with pytest.raises(CommandError, match=rf"sequence {target.sequence + 1}: previous hash"):
        verify_audit()


def test_it_detects_a_row_deleted_from_the_middle():
    events = append(6)
    target = events[2].sequence
    with append_only_guard_lifted() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE sequence = %s", [target])
    with pytest.raises(CommandError, match=rf"sequence {target}: missing event"):
        verify_audit()


def test_it_detects_a_truncated_tail():
    events = append(6)
    cut = events[4].sequence
    with append_only_guard_lifted() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE sequence >= %s", [cut])
    with pytest.raises(CommandError, match=rf"sequence {cut}: events after this point"):
        verify_audit()


def test_it_refuses_updates_and_deletes_through_the_orm():
    event = append(1)[0]
    with pytest.raises(TypeError, match="append-only"):
        AuditEvent.objects.filter(pk=event.pk).update(verb="forged")
    with pytest.raises(TypeError, match="append-only"):
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(TypeError, match="append-only"):
        AuditEvent.objects.all().delete()
    event.verb = "forged"
    with pytest.raises(TypeError, match="append-only"):
        event.save()
    with pytest.raises(TypeError, match="append-only"):
        event.delete()
    assert AuditEvent.objects.get(pk=event.pk).verb == "test.event"
    assert verify_chain().ok


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditevent SET verb = 'forged' WHERE sequence = %s",
        "DELETE FROM audit_auditevent WHERE sequence = %s",
    ],
)
def test_it_refuses_raw_sql_changes_in_the_database(statement):
    event = append(1)[0]
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, [event.sequence])
    assert AuditEvent.objects.get(pk=event.pk).verb == "test.event"
    assert verify_chain().ok


def test_it_fails_closed_when_the_event_cannot_be_written():
    head_before = AuditChainHead.objects.get(id=1).last_sequence
    with pytest.raises(TypeError), transaction.atomic():
        Group.objects.create(name="changed-without-evidence")
        record(actor=Actor.system(), verb="test.unwritable", data={"what": object()})
    assert not Group.objects.filter(name="changed-without-evidence").exists()
    assert AuditChainHead.objects.get(id=1).last_sequence == head_before


def test_it_rolls_the_event_back_with_a_failed_state_change():
    head_before = AuditChainHead.objects.get(id=1)
    with pytest.raises(RuntimeError), transaction.atomic():
        record(actor=Actor.system(), verb="test.undone")
        raise RuntimeError("the state change failed after its event was recorded")
    assert not AuditEvent.objects.filter(verb="test.undone").exists()
    head = AuditChainHead.objects.get(id=1)
    assert (head.last_sequence, head.last_hash) == (
        head_before.last_sequence,
        head_before.last_hash,
    )
    after = record(actor=Actor.system(), verb="test.next")
    assert after.sequence == head_before.last_sequence + 1
    assert verify_chain().ok


WRITERS = 20
EVENTS_PER_WRITER = 25


@pytest.mark.django_db(transaction=True)
def test_it_keeps_one_chain_under_concurrent_writers():
    start = AuditChainHead.objects.filter(id=1).values_list("last_sequence", flat=True).first()
    start = start or 0
    barrier = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            barrier.wait(timeout=30)
            for index in range(EVENTS_PER_WRITER):
                record(
                    actor=Actor.system(f"writer-{number}"),
                    verb="test.concurrent",
                    data={"writer": number, "index": index},
                )
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    written = list(
        AuditEvent.objects.filter(verb="test.concurrent")
        .order_by("sequence")
        .values_list("sequence", "previous_hash")
    )
    total = WRITERS * EVENTS_PER_WRITER
    assert len(written) == total
    assert [sequence for sequence, _ in written] == list(range(start + 1, start + total + 1))
    assert len({previous for _, previous in written}) == total
    report = verify_chain()
    assert report.ok, report
    assert report.verified == AuditEvent.objects.count() == start + total
