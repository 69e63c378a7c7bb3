"""The append: on PostgreSQL one statement in the database (audit migration 0007) chains and
inserts events; what it stores must be exactly what Python's canonical hash and the verifier
expect, for any content, alone or in a batch, and under writers that append batches at once."""

import threading
from datetime import UTC, datetime

import pytest
import time_machine
from django.db import connection, transaction

from audit.models import AuditEvent
from audit.services import Actor, deferred_evidence, record, verify_chain

pytestmark = pytest.mark.django_db

AWKWARD_DATA = [
    {},
    {"note": "ünïcode ✓ — and a non-BMP character 🔐"},
    {"quote": 'say "no"', "backslash": "C:\\path\\to", "newline": "a\nb\tc", "nul-ish": "\u0001"},
    {"z": 1, "a": {"y": [3, 2, 1], "b": None, "nested": {"k": True}}, "m": 1.5},
    {"big": 2**62, "negative": -7, "empty": "", "list": []},
    {"sequence": 99, "previous_hash": "0" * 64, "verb": "not.this"},  # keys that look like ours
]


def stored(event: AuditEvent) -> AuditEvent:
    return AuditEvent.objects.get(pk=event.pk)


@pytest.mark.parametrize("data", AWKWARD_DATA)
def test_it_stores_the_hash_python_computes_for_any_content(data):
    agent_actor = Actor("agent", 'spiffe://example.org/ä "quoted" agent')
    event = record(
        actor=agent_actor,
        verb="test.awkward",
        agent_id=7,
        access_request_id=None,
        grant_id=2**40,
        data=data,
    )
    row = stored(event)
    assert row.hash == row.compute_hash()
    assert (row.sequence, row.previous_hash, row.hash) == (
        event.sequence,
        event.previous_hash,
        event.hash,
    )
    assert row.occurred_at == event.occurred_at
    assert row.data == data
    report = verify_chain()
    assert report.ok, report


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2025, 3, 1, 0, 0, 0, 0, tzinfo=UTC),  # microsecond 0: ".000000" in the hash
        datetime(2031, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_it_hashes_the_time_the_writer_read_from_its_clock(moment):
    with time_machine.travel(moment, tick=False):
        event = record(actor=Actor.system("clock"), verb="test.clock")
    row = stored(event)
    assert row.occurred_at == moment
    assert row.hash == row.compute_hash()


def test_it_chains_a_batch_in_order_within_one_append():
    before = AuditEvent.objects.order_by("-sequence").first()
    with transaction.atomic(), deferred_evidence():
        events = [
            record(actor=Actor.system("batch"), verb="test.batch", data={"index": index})
            for index in range(5)
        ]
    rows = [stored(event) for event in events]
    assert [row.sequence for row in rows] == list(
        range(before.sequence + 1, before.sequence + 6) if before else range(1, 6)
    )
    assert rows[0].previous_hash == (before.hash if before else "0" * 64)
    for earlier, later in zip(rows, rows[1:], strict=False):
        assert later.previous_hash == earlier.hash
    assert all(row.hash == row.compute_hash() for row in rows)
    assert verify_chain().ok


def test_a_batch_of_mixed_events_stores_each_one_as_it_was_recorded():
    """Every column of every event in one append lands on its own row: the events differ in
    each field (actor, verb, the three ids, null or not, and awkward data), so a shifted or
    reordered column would store one event's field on another's row."""
    with transaction.atomic(), deferred_evidence():
        events = [
            record(
                actor=Actor("agent" if index % 2 else "user", f'actor "{index}" ü\\'),
                verb=f"test.mixed.{index}",
                agent_id=index + 1 if index % 2 else None,
                access_request_id=None if index % 3 else 1000 + index,
                grant_id=2**40 + index if index % 2 == 0 else None,
                data=data,
            )
            for index, data in enumerate(AWKWARD_DATA * 2)
        ]
    for event in events:
        row = stored(event)
        assert (row.actor_type, row.actor_id, row.verb) == (
            event.actor_type,
            event.actor_id,
            event.verb,
        )
        assert (row.agent_id, row.access_request_id, row.grant_id) == (
            event.agent_id,
            event.access_request_id,
            event.grant_id,
        )
        assert row.data == event.data
        assert row.hash == row.compute_hash() == event.hash
    report = verify_chain()
    assert report.ok, report


def test_a_rolled_back_append_leaves_neither_events_nor_a_moved_head():
    before = AuditEvent.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic(), deferred_evidence():
        record(actor=Actor.system("rollback"), verb="test.rolled_back")
        raise RuntimeError("the state change failed")
    assert AuditEvent.objects.count() == before
    record(actor=Actor.system("after"), verb="test.after")
    assert verify_chain().ok


WRITERS = 12
BATCHES = 10


def append_batches_at_once(writers: int, batches: int) -> list[BaseException]:
    """`writers` threads released together, each appending `batches` batches of three events
    (`test.concurrent_batch`, one transaction a batch); the errors they met."""
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            barrier.wait(timeout=30)
            for batch in range(batches):
                with transaction.atomic(), deferred_evidence():
                    for index in range(3):
                        record(
                            actor=Actor.system(f"writer-{number}"),
                            verb="test.concurrent_batch",
                            data={"writer": number, "batch": batch, "index": index},
                        )
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.django_db(transaction=True)
def test_it_keeps_one_chain_when_writers_append_batches_at_once():
    assert append_batches_at_once(WRITERS, BATCHES) == []
    written = list(
        AuditEvent.objects.filter(verb="test.concurrent_batch")
        .order_by("sequence")
        .values_list("sequence", "data")
    )
    assert len(written) == WRITERS * BATCHES * 3
    # Each batch got consecutive sequence numbers: no writer's append interleaved another's.
    for start in range(0, len(written), 3):
        batch = written[start : start + 3]
        assert [data["index"] for _, data in batch] == [0, 1, 2]
        assert len({(data["writer"], data["batch"]) for _, data in batch}) == 1
        assert [sequence for sequence, _ in batch] == list(range(batch[0][0], batch[0][0] + 3))
    report = verify_chain()
    assert report.ok, report
    assert report.verified == AuditEvent.objects.count()
