"""The evidence log's partitions (PostgreSQL; audit migration 0010, docs/audit-at-scale.md).

The events are partitioned by ranges of `sequence`, about a month each. The owner's SECURITY
DEFINER function `audit_partition_ahead()` creates the next ones: beat calls it to keep one
whole partition ahead of the chain head, and `audit_append` calls it itself when a burst would
run past the newest, so an append never fails for lack of a partition. The app's role cannot
create, detach or drop tables; removing an archived partition is the owner's
`drop_audit_partition`, which refuses unless an archive of exactly that range verifies.

On SQLite (the embedded default) the table is plain: there are no partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection


@dataclass(frozen=True)
class Partition:
    name: str
    from_sequence: int  # the first sequence it holds
    to_sequence: int  # the first sequence it does not hold

    @property
    def last_sequence(self) -> int:
        return self.to_sequence - 1


def partitioned() -> bool:
    return connection.vendor == "postgresql"


def partitions() -> list[Partition]:
    """Every partition of the events, oldest first ([] on SQLite)."""
    if not partitioned():
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT partition_name, from_sequence, to_sequence FROM audit_event_partitions()"
        )
        return [Partition(*row) for row in cursor.fetchall()]


def partition_ahead(*, size: int | None = None) -> int | None:
    """Create the next partitions if the head has entered the newest (beat, every
    CUSTODY_AUDIT_PARTITION_SECONDS); returns where the newest ends. `size`: events per new
    partition (default: the last 30 days' volume, at least 10,000); only the owner may set it."""
    if not partitioned():
        return None
    with connection.cursor() as cursor:
        if size is None:
            cursor.execute("SELECT audit_partition_ahead()")
        else:  # the owner's only
            cursor.execute("SELECT audit_partition_ahead_by(%s)", [size])
        return cursor.fetchone()[0]


def partition_ends(after: int, through: int) -> list[int]:
    """The last sequence of every partition that ends after `after` and at or before `through`:
    the publisher signs each as it walks past (so every partition's range is bounded by signed
    checkpoints, and can be archived and removed so that what remains still verifies)."""
    return [
        partition.last_sequence
        for partition in partitions()
        if after < partition.last_sequence <= through
    ]


def partition_cover(*, through: int, size: int) -> list[Partition]:
    """For bulk loads by the tables' owner (bench/audit_seed.py, the page benches), which write
    events past the head before moving it: create partitions of `size` events after the newest
    until one holds `through`. Returns those created. (The app's role cannot: the function is
    the owner's.)"""
    created: list[Partition] = []
    if not partitioned():
        return created
    found = partitions()
    start = found[-1].to_sequence if found else 1
    with connection.cursor() as cursor:
        while start <= through:
            cursor.execute("SELECT audit_partition_create(%s, %s)", [start, start + size])
            created.append(Partition(cursor.fetchone()[0], start, start + size))
            start += size
    return created
