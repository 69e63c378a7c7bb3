"""Reads of named read-only pages from a PostgreSQL read replica (DATABASE_REPLICA_URL).

Unset (the default), there is one database and nothing here does anything. Set, the `replica`
alias exists and ReplicaRouter sends a read there only when all of these hold:

- the code reading is inside `replica_reads()` (a page that only shows evidence or aggregates:
  the audit page and its export, the posture page), never by default;
- the model is one of REPLICA_MODELS: evidence and the grant/request history. People, groups,
  permissions (django.contrib.auth, guardian), sessions, policies, signing keys, trust domains
  are never read from the replica, so no authorization decision is made on lagging data;
- no transaction is open on the primary (a read inside a transaction that writes, or that
  locks, must see that transaction);
- the caller did not ask for the primary (`on_primary()`), as a permission filter computed for
  a replica page does.

Writes always go to the primary. Decision paths (submission, decisions, introspection, token
refresh, tool calls, the sweeps) never enter `replica_reads()`, so they never read the replica.
A replica lags: a page served from it may miss the last moments of evidence (docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings
from django.db import connections

REPLICA = "replica"
PRIMARY = "default"
# Lower-case app_label.model_name of what a replica page may read from the replica.
REPLICA_MODELS = frozenset(
    {
        "audit.auditevent",
        "audit.chaincheck",
        "audit.auditcheckpoint",
        "agents.agent",
        "approvals.accessrequest",
        "approvals.decision",
        "approvals.grant",
        "approvals.driftflag",
        "approvals.privilege",
    }
)

_reads: ContextVar[str | None] = ContextVar("custody_replica_reads", default=None)


def replica_configured() -> bool:
    return REPLICA in settings.DATABASES


@contextmanager
def replica_reads():
    """Reads of REPLICA_MODELS inside go to the replica, if there is one."""
    token = _reads.set(REPLICA)
    try:
        yield
    finally:
        _reads.reset(token)


@contextmanager
def on_primary():
    """Reads inside go to the primary even on a replica page (permission filters)."""
    token = _reads.set(PRIMARY)
    try:
        yield
    finally:
        _reads.reset(token)


def reading_replica() -> bool:
    return replica_configured() and _reads.get() == REPLICA


def replica_stream(rows: Iterable) -> Iterator:
    """A streamed body (an export) read from the replica, chunk by chunk: the context is entered
    and left within each step, so it never leaks into whatever serves the stream."""
    iterator = iter(rows)
    while True:
        with replica_reads():
            try:
                row = next(iterator)
            except StopIteration:
                return
        yield row


class ReplicaRouter:
    def db_for_read(self, model, **hints):
        if _reads.get() != REPLICA or model._meta.label_lower not in REPLICA_MODELS:
            return PRIMARY
        if REPLICA not in settings.DATABASES or connections[PRIMARY].in_atomic_block:
            return PRIMARY
        return REPLICA

    def db_for_write(self, model, **hints):
        return PRIMARY

    def allow_relation(self, obj1, obj2, **hints):
        return True  # one database and its copy

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == PRIMARY
