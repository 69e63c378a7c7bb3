"""The evidence log: `record()` is the one way to write an event.

Appends are serialized by locking the single chain-head row, so sequence numbers and hashes form
one unbroken chain whatever the number of concurrent writers. The lock is held until the caller's
transaction commits, which is what makes an event and the state change it describes atomic.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from audit.models import GENESIS_HASH, AuditChainHead, AuditEvent

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


def _append(events: list[AuditEvent]) -> None:
    """Chain and insert `events` in order: one head lock, one multi-row insert, one head update.

    No savepoint of its own: if the append fails, the caller's whole change rolls back with it
    (fail closed). The head lock is held until the caller commits."""
    if not events:
        return
    with transaction.atomic(savepoint=False):
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

    @property
    def ok(self) -> bool:
        return self.first_bad_sequence is None


def verify_chain(batch_size: int = 2000) -> ChainReport:
    """Walk the whole chain in sequence order; report the first link that does not hold."""
    expected_previous = GENESIS_HASH
    expected_sequence = 1
    verified = 0
    last_sequence = 0
    while True:
        batch = list(
            AuditEvent.objects.filter(sequence__gt=last_sequence).order_by("sequence")[:batch_size]
        )
        if not batch:
            break
        for event in batch:
            if event.sequence != expected_sequence:
                return ChainReport(verified, expected_sequence, "missing event (gap in sequence)")
            if event.previous_hash != expected_previous:
                return ChainReport(verified, event.sequence, "previous hash does not match")
            if event.compute_hash() != event.hash:
                return ChainReport(verified, event.sequence, "content does not match its hash")
            expected_previous = event.hash
            expected_sequence += 1
            verified += 1
        last_sequence = batch[-1].sequence
    head = AuditChainHead.objects.filter(id=1).first()
    if head is not None and head.last_sequence != last_sequence:
        return ChainReport(verified, last_sequence + 1, "events after this point were removed")
    return ChainReport(verified, None)


def record_throttled(*, bucket: str, per_minute: int, **event) -> AuditEvent | None:
    """Record, unless this bucket already wrote `per_minute` events this minute.

    For evidence that outsiders can trigger at will (rejected logins, forged callbacks): a flood
    must not be able to fill the log, yet the first of every minute is always kept."""
    from django.core.cache import cache

    key = f"custody:audit-budget:{bucket}:{int(timezone.now().timestamp() // 60)}"
    cache.add(key, 0, 120)
    try:
        count = cache.incr(key)
    except ValueError:  # evicted between add and incr
        count = 1
    if count > per_minute:
        return None
    if count == per_minute:
        event.setdefault("data", {})["budget_note"] = "last audited event this minute"
    return record(**event)
