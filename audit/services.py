"""The evidence log: `record()` is the one way to write an event.

Appends are serialized by locking the single chain-head row, so sequence numbers and hashes form
one unbroken chain whatever the number of concurrent writers. The lock is held until the caller's
transaction commits, which is what makes an event and the state change it describes atomic. On
PostgreSQL one server-side statement (`audit_append`, migration 0007) takes the lock, chains and
inserts, so the lock is held for that statement and the commit only (bench/sweep.py measures it).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.cache.backends.locmem import LocMemCache
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from audit import checkpoints
from audit.models import GENESIS_HASH, AuditChainHead, AuditCheckpoint, AuditEvent
from audit.partitions import partition_ends

logger = logging.getLogger(__name__)
# Where record_throttled counts its budget while the shared cache is unreachable.
_process_budget = LocMemCache("custody-audit-budget", {"OPTIONS": {"MAX_ENTRIES": 1000}})

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


@dataclass(frozen=True)
class Actor:
    type: str
    id: str

    @classmethod
    def system(cls, name: str = "custody") -> Actor:
        return cls(AuditEvent.ActorType.SYSTEM, name)

    @classmethod
    def for_user(cls, user: AbstractBaseUser) -> Actor:
        return cls(AuditEvent.ActorType.USER, user.get_username())

    @classmethod
    def for_agent(cls, agent: Any) -> Actor:
        return cls(AuditEvent.ActorType.AGENT, agent.spiffe_id)

    @classmethod
    def anonymous(cls, label: str) -> Actor:
        return cls(AuditEvent.ActorType.SYSTEM, f"unauthenticated:{label}")


def _plain(data: dict[str, Any] | None) -> dict[str, Any]:
    # Round-trip through JSON so the stored value and the hashed value are the same object
    # (datetimes, UUIDs and decimals become strings exactly once).
    return json.loads(json.dumps(data or {}, cls=DjangoJSONEncoder))


def _advance_head(count: int) -> tuple[int, str]:
    """Lock the chain head, move it `count` on, and return (new last sequence, previous hash).

    One statement both takes the row lock that orders writers and reads the last link."""
    table = AuditChainHead._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_sequence = last_sequence + %s WHERE id = 1 "  # noqa: S608
            "RETURNING last_sequence, last_hash",
            [count],
        )
        row = cursor.fetchone()
    if row is None:  # a database emptied wholesale (a test flush): start the chain again
        AuditChainHead.objects.get_or_create(id=1)
        return _advance_head(count)
    return row[0], row[1]


# The events go to audit_append() as one JSON document, unpacked into its arrays in the
# statement: psycopg writes a text[] parameter element by element through a regex escape (about
# 1 ms for five events on the bench machine), one json.dumps string costs a twentieth of that.
# WITH ORDINALITY ... ORDER BY n keeps every column in the events' order.
_APPEND_SQL = """
WITH e AS (
    SELECT x, n FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(x, n)
)
SELECT event_id, event_sequence, event_at, event_previous, event_hash FROM audit_append(
    %s,
    ARRAY(SELECT x->>0 FROM e ORDER BY n),
    ARRAY(SELECT x->>1 FROM e ORDER BY n),
    ARRAY(SELECT x->>2 FROM e ORDER BY n),
    ARRAY(SELECT x->>3 FROM e ORDER BY n),
    ARRAY(SELECT x->>4 FROM e ORDER BY n),
    ARRAY(SELECT (x->>5)::bigint FROM e ORDER BY n),
    ARRAY(SELECT (x->>6)::bigint FROM e ORDER BY n),
    ARRAY(SELECT (x->>7)::bigint FROM e ORDER BY n),
    ARRAY(SELECT x->8 FROM e ORDER BY n)
)
"""


def _append_in_database(events: list[AuditEvent]) -> bool:
    """PostgreSQL: the whole append in one statement (audit migration 0007), so the head lock
    is held for that statement and the commit, not for three round trips and the hashing in
    between. False if there is no head row yet."""
    items = []
    for event in events:
        head, tail = event.canonical_parts()
        items.append(
            (head, tail, event.actor_type, event.actor_id, event.verb, event.agent_id)
            + (event.access_request_id, event.grant_id, event.data)
        )
    document = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
    with connection.cursor() as cursor:
        cursor.execute(_APPEND_SQL, [document, timezone.now()])
        rows = cursor.fetchall()
    if not rows:
        return False
    for event, (pk, sequence, occurred_at, previous_hash, chain_hash) in zip(
        events, rows, strict=True
    ):
        event.pk, event.sequence, event.occurred_at = pk, sequence, occurred_at
        event.previous_hash, event.hash = previous_hash, chain_hash
        event._state.adding, event._state.db = False, connection.alias
    return True


def _append_from_python(events: list[AuditEvent]) -> None:
    """Any database (SQLite): lock and advance the head, hash here, one multi-row insert, store
    the last hash: three statements while holding the head lock."""
    last_sequence, previous_hash = _advance_head(len(events))
    occurred_at = timezone.now()
    for sequence, event in enumerate(events, start=last_sequence - len(events) + 1):
        event.sequence = sequence
        event.occurred_at = occurred_at
        event.previous_hash = previous_hash
        event.hash = event.compute_hash()
        previous_hash = event.hash
    AuditEvent.objects.bulk_create(events)
    AuditChainHead.objects.filter(id=1).update(last_hash=previous_hash)


def _append(events: list[AuditEvent]) -> None:
    """Chain and insert `events` in order under the one chain-head lock.

    No savepoint of its own: if the append fails, the caller's whole change rolls back with it
    (fail closed). The head lock is held until the caller commits."""
    if not events:
        return
    with transaction.atomic(savepoint=False):
        if connection.vendor != "postgresql":
            _append_from_python(events)
        elif not _append_in_database(events):
            AuditChainHead.objects.get_or_create(id=1)  # a database emptied wholesale
            if not _append_in_database(events):
                raise RuntimeError("audit: the chain head row cannot be created")


_deferred = threading.local()


@contextmanager
def deferred_evidence():
    """Inside this block `record()` queues its events; they are appended together when the block
    ends without error. Use it inside the transaction it describes (`with transaction.atomic(),
    deferred_evidence():`), so the events still commit or roll back with the change, while the
    chain-head lock is taken once, at the end, instead of at the first event."""
    if getattr(_deferred, "events", None) is not None:  # nested: the outermost block appends
        yield
        return
    _deferred.events = []
    try:
        yield
        events, _deferred.events = _deferred.events, None
        _append(events)
    finally:
        _deferred.events = None


def record(
    *,
    actor: Actor,
    verb: str,
    agent_id: int | None = None,
    access_request_id: int | None = None,
    grant_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction (or a new one); within
    `deferred_evidence()` it is queued and gets its sequence when the block ends."""
    event = AuditEvent(
        actor_type=actor.type,
        actor_id=actor.id,
        verb=verb,
        agent_id=agent_id,
        access_request_id=access_request_id,
        grant_id=grant_id,
        data=_plain(data),
    )
    queue = getattr(_deferred, "events", None)
    if queue is not None:
        queue.append(event)
    else:
        _append([event])
    return event


@dataclass(frozen=True)
class ChainReport:
    verified: int
    first_bad_sequence: int | None
    problem: str = ""
    checkpoints: int = 0  # signed checkpoints the chain was held against
    latest_checkpoint: int | None = None
    started_after: int = 0  # the signed checkpoint an incremental walk started from (0: genesis)

    @property
    def ok(self) -> bool:
        return self.first_bad_sequence is None


def _published_checkpoints(against: Iterable[Path]) -> dict[int, list[checkpoints.Checkpoint]]:
    """Every checkpoint claimed: the published file, each externally kept copy, and the
    database's copies (which prove nothing by being there: like any other, a checkpoint counts
    only once its signature verifies with the key outside the database). ValueError names the
    first that is not a checkpoint at all."""
    found: list[checkpoints.Checkpoint] = []
    for path in [Path(settings.CUSTODY_CHECKPOINT_FILE), *against]:
        try:
            found += checkpoints.read_file(path)
        except OSError as exc:
            raise ValueError(f"{path}: cannot be read ({exc.strerror})")
    for copy in AuditCheckpoint.objects.order_by("sequence").iterator():
        found.append(checkpoints.parse_document(copy.document, "database copy"))
    by_sequence: dict[int, list[checkpoints.Checkpoint]] = {}
    for checkpoint in found:
        by_sequence.setdefault(checkpoint.sequence, []).append(checkpoint)
    return by_sequence


def verify_chain(*, against: Iterable[Path] = (), batch_size: int = 5000) -> ChainReport:
    """Walk the whole chain in sequence order; report the first link that does not hold.

    Beyond the links themselves, the chain must contain every signed checkpoint (sequence and
    hash): someone who rewrote events and recomputed every later hash and the head, or cut the
    tail and moved the head back, holds the database but not the checkpoint key. The walk
    itself (and its incremental form) lives in `audit.verification`."""
    from audit.verification import verify

    return verify(full=True, against=against, batch_size=batch_size)


checkpoint_log = logging.getLogger("custody.audit.checkpoint")
# Any number: concurrent publishers (several workers) take turns through this advisory lock.
_PUBLISH_LOCK = 0x43555354  # "CUST"


@dataclass(frozen=True)
class CheckpointResult:
    document: dict[str, Any] | None  # the checkpoint published, if any
    report: ChainReport  # the walk from the last checkpoint to the head that it vouches for


@contextmanager
def _publisher_turn():
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_PUBLISH_LOCK])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_PUBLISH_LOCK])


def _last_published() -> list[checkpoints.Checkpoint]:
    """The latest checkpoint in the published file and in the database, if their signatures
    verify (a copy that does not verify is no starting point: the walk then starts earlier)."""
    found = []
    last_line = checkpoints.last_in_file(Path(settings.CUSTODY_CHECKPOINT_FILE))
    copy = AuditCheckpoint.objects.order_by("-sequence").first()
    for document, source in ((last_line, "file"), (copy and copy.document, "database copy")):
        if document is None:
            continue
        try:
            found.append(checkpoints.verify_document(document, source))
        except ValueError as exc:
            checkpoint_log.warning("Ignoring the last checkpoint in the %s: %s", source, exc)
    return found


def checkpoint_publish() -> CheckpointResult:
    """Sign (sequence, hash) of the chain head and publish it: append to the JSON Lines file, log
    it, keep a copy in the database for the HTTP endpoint. Only a chain that verifies from the
    previous checkpoint to the head is signed; nothing is published when the head has not moved.

    Runs from beat (never in a request): reads in autocommit, no lock on the chain head, so
    appends go on meanwhile; the walk stops at the head it read, whose events had committed."""
    with _publisher_turn() as my_turn:
        if not my_turn:
            return CheckpointResult(None, ChainReport(0, None, "another publisher is running"))
        head = AuditChainHead.objects.filter(id=1).first()
        head_sequence = head.last_sequence if head else 0
        start_sequence, start_hash = 0, GENESIS_HASH
        oldest = oldest_sequence()
        for previous in _last_published():
            if previous.sequence > head_sequence:
                return _refuse(
                    ChainReport(
                        0,
                        head_sequence + 1,
                        f"events after {head_sequence} removed: checkpoint at "
                        f"{previous.sequence} exists ({previous.source})",
                    )
                )
            event = AuditEvent.objects.filter(sequence=previous.sequence).first()
            if event is None and previous.sequence < oldest:
                # Archived and removed (drop_audit_partition): the signed checkpoint at the
                # removal boundary is where the remaining chain starts; an older one is no use.
                if previous.sequence == oldest - 1 and previous.sequence > start_sequence:
                    start_sequence, start_hash = previous.sequence, previous.hash
                continue
            if event is None or event.hash != previous.hash:
                return _refuse(
                    ChainReport(
                        0,
                        previous.sequence,
                        f"content rewritten at or before sequence {previous.sequence}: "
                        f"checkpoint hash mismatch ({previous.source})",
                    )
                )
            if previous.sequence > start_sequence:
                start_sequence, start_hash = previous.sequence, previous.hash
        if oldest > 1 and start_sequence < oldest - 1:
            return _refuse(history_missing(oldest))
        if head is None or head_sequence == start_sequence:
            return CheckpointResult(None, ChainReport(0, None, "the chain has not moved"))
        # Every partition's last event the walk passes is signed as well as the head: each
        # partition is then bounded by signed checkpoints, so it can be archived alone and
        # removed, and what remains verifies from the boundary (docs/audit-at-scale.md).
        ends = {end: "" for end in partition_ends(start_sequence, head.last_sequence - 1)}
        report = _walk_between(start_sequence, start_hash, head, ends)
        if not report.ok:
            return _refuse(report)
        signed_at = timezone.now().replace(microsecond=0)
        documents = [
            checkpoints.sign(
                sequence=sequence, chain_hash=chain_hash, signed_at=signed_at.isoformat()
            )
            for sequence, chain_hash in [
                *sorted(ends.items()),
                (head.last_sequence, head.last_hash),
            ]
        ]
        for document in documents:  # the head's last: the file's last line is the newest
            checkpoints.append_to_file(Path(settings.CUSTODY_CHECKPOINT_FILE), document)
        AuditCheckpoint.objects.bulk_create(
            [
                AuditCheckpoint(
                    sequence=document["sequence"],
                    hash=document["hash"],
                    signed_at=signed_at,
                    document=document,
                )
                for document in documents
            ],
            ignore_conflicts=True,
        )
    for document in documents:
        checkpoint_log.info(json.dumps(document, sort_keys=True, separators=(",", ":")))
    return CheckpointResult(documents[-1], report)


def _refuse(report: ChainReport) -> CheckpointResult:
    checkpoint_log.error(
        "Audit checkpoint NOT published: chain broken at sequence %s: %s",
        report.first_bad_sequence,
        report.problem,
    )
    return CheckpointResult(None, report)


def _walk_between(
    start_sequence: int, start_hash: str, head: AuditChainHead, marks: dict[int, str] | None = None
) -> ChainReport:
    """Check the links from a checkpoint to the head (inclusive), and the head's hash; fill in
    the hash of each sequence in `marks` as the walk verifies it."""
    marks = {} if marks is None else marks
    expected_previous, expected_sequence, verified = start_hash, start_sequence + 1, 0
    events = AuditEvent.objects.filter(
        sequence__gt=start_sequence, sequence__lte=head.last_sequence
    ).order_by("sequence")
    for event in events.iterator(chunk_size=2000):
        if event.sequence != expected_sequence:
            return ChainReport(verified, expected_sequence, "missing event (gap in sequence)")
        if event.previous_hash != expected_previous:
            return ChainReport(verified, event.sequence, "previous hash does not match")
        if event.compute_hash() != event.hash:
            return ChainReport(verified, event.sequence, "content does not match its hash")
        if event.sequence in marks:
            marks[event.sequence] = event.hash
        expected_previous, expected_sequence = event.hash, expected_sequence + 1
        verified += 1
    if expected_sequence != head.last_sequence + 1:
        return ChainReport(verified, expected_sequence, "events after this point were removed")
    if expected_previous != head.last_hash:
        return ChainReport(
            verified,
            head.last_sequence,
            f"chain head hash does not match event {head.last_sequence}",
        )
    return ChainReport(verified, None)


def history_missing(oldest: int) -> ChainReport:
    """Events before `oldest` are gone and no signed checkpoint at the boundary vouches for
    them: what they look like, missing history (the publisher and both walks say so)."""
    return ChainReport(
        0,
        oldest,
        f"events before {oldest} are not in the database and no signed checkpoint at "
        f"{oldest - 1} vouches for them",
    )


def oldest_sequence() -> int:
    """The first event the database holds: 1, or past the partitions archived and removed."""
    return AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True).first() or 1


def _count_in(store, key: str) -> int:
    store.add(key, 0, 120)
    try:
        return store.incr(key)
    except ValueError:  # evicted between add and incr
        return 1


def record_throttled(*, bucket: str, per_minute: int, **event) -> AuditEvent | None:
    """Record, unless this bucket already wrote `per_minute` events this minute.

    For evidence that outsiders can trigger at will (rejected logins, forged callbacks): a flood
    must not be able to fill the log, yet the first of every minute is always kept. The budget
    is counted in the shared cache; while that is down, each process counts its own, so the
    evidence is still written (and still bounded) and the caller never fails because of it."""
    from django.core.cache import cache

    key = f"custody:audit-budget:{bucket}:{int(timezone.now().timestamp() // 60)}"
    try:
        count = _count_in(cache, key)
    except Exception as exc:  # noqa: BLE001 - any cache backend, any failure: count locally
        logger.warning("Audit budget: the shared cache failed (%r); counting in this process", exc)
        count = _count_in(_process_budget, key)
    if count > per_minute:
        return None
    if count == per_minute:
        event.setdefault("data", {})["budget_note"] = "last audited event this minute"
    return record(**event)
