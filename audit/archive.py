"""Archives of old evidence that stay verifiable without the database.

An archive covers the events between two signed checkpoints (the previous archive's end, or the
genesis, and a checkpoint near the end of a month), so it starts and ends at hashes signed with
the key the database does not hold. A JSON Lines file: a header (the range and the starting
checkpoint), every event as `export_audit` writes it, and a trailer with the ending checkpoint.
`verify_archive` walks the file alone, and checks that the database's next event (if the database
still has it) links to the archive's last hash: the chain verifies across the boundary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction

from audit import checkpoints
from audit.exports import export_rows
from audit.models import GENESIS_HASH, HASHED_FIELDS, AuditEvent, chain_hash
from audit.partitions import partitions
from audit.services import Actor, record

HEADER_TYPE = "custody.audit.archive"
TRAILER_TYPE = "custody.audit.archive.end"


def signed_checkpoints() -> list[checkpoints.Checkpoint]:
    """The published file's checkpoints whose signatures verify, in sequence order."""
    found = []
    for checkpoint in checkpoints.read_file(Path(settings.CUSTODY_CHECKPOINT_FILE)):
        try:
            checkpoint.check_signature()
        except ValueError:
            continue
        found.append(checkpoint)
    return sorted(found, key=lambda checkpoint: checkpoint.sequence)


def archive_lines(*, after: checkpoints.Checkpoint | None, through: checkpoints.Checkpoint):
    """The archive of the events after `after` (None: from the first) through `through`."""
    first = after.sequence + 1 if after else 1
    yield _line(
        {
            "type": HEADER_TYPE,
            "v": 1,
            "first_sequence": first,
            "last_sequence": through.sequence,
            "start_checkpoint": after.document if after else None,
        }
    )
    count = 0
    events = AuditEvent.objects.filter(sequence__gte=first, sequence__lte=through.sequence)
    for row in export_rows(events.order_by("sequence")):
        count += 1
        yield _line(row)
    yield _line({"type": TRAILER_TYPE, "count": count, "checkpoint": through.document})


def _line(document: dict) -> str:
    return json.dumps(document, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class ArchiveReport:
    first_sequence: int
    last_sequence: int
    verified: int
    problem: str = ""
    links_to_database: bool | None = None  # None: the database no longer holds the next event

    @property
    def ok(self) -> bool:
        return not self.problem


def _documents(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{number}: not JSON")


def verify_archive(path: Path) -> ArchiveReport:
    """Walk an archive file: its starting checkpoint, every link and hash, its ending checkpoint,
    and the link from its last event to the database's next one."""
    documents = _documents(path)
    try:
        _, header = next(documents)
    except StopIteration:
        header = {}
    if header.get("type") != HEADER_TYPE:
        return ArchiveReport(0, 0, 0, f"{path}: not a Custody audit archive")
    first, last = header["first_sequence"], header["last_sequence"]
    expected_previous, expected_sequence, verified = GENESIS_HASH, first, 0
    try:
        if header.get("start_checkpoint") is not None:
            start = checkpoints.verify_document(header["start_checkpoint"], f"{path}: start")
            if start.sequence != first - 1:
                return ArchiveReport(first, last, 0, "the start checkpoint is not the one before")
            expected_previous = start.hash
        elif first != 1:
            return ArchiveReport(first, last, 0, "no signed checkpoint for where it starts")
        trailer = None
        for number, document in documents:
            if document.get("type") == TRAILER_TYPE:
                trailer = document
                break
            fields = {name: document.get(name) for name in HASHED_FIELDS}
            fields["occurred_at"] = datetime.fromisoformat(document["occurred_at"])
            sequence = fields["sequence"]
            if sequence != expected_sequence:
                return ArchiveReport(first, last, verified, f"line {number}: gap before {sequence}")
            if fields["previous_hash"] != expected_previous:
                return ArchiveReport(
                    first, last, verified, f"sequence {sequence}: previous hash does not match"
                )
            if chain_hash(fields) != document.get("hash"):
                return ArchiveReport(
                    first, last, verified, f"sequence {sequence}: content does not match its hash"
                )
            expected_previous, expected_sequence = document["hash"], sequence + 1
            verified += 1
        if trailer is None:
            return ArchiveReport(first, last, verified, "the archive has no end (cut short)")
        end = checkpoints.verify_document(trailer.get("checkpoint"), f"{path}: end")
    except (ValueError, KeyError, TypeError) as exc:
        return ArchiveReport(first, last, verified, f"malformed: {exc}")
    if end.sequence != last or expected_sequence != last + 1 or trailer.get("count") != verified:
        return ArchiveReport(first, last, verified, "the events do not reach the end checkpoint")
    if end.hash != expected_previous:
        return ArchiveReport(
            first, last, verified, f"sequence {last}: hash does not match the signed checkpoint"
        )
    following = (
        AuditEvent.objects.filter(sequence=last + 1).values_list("previous_hash", flat=True).first()
    )
    if following is not None and following != end.hash:
        return ArchiveReport(
            first, last, verified, f"the database's event {last + 1} does not link to the archive"
        )
    return ArchiveReport(first, last, verified, links_to_database=following is not None or None)


class RemovalRefused(Exception):
    pass


@dataclass(frozen=True)
class Removal:
    partition: str
    first_sequence: int
    last_sequence: int
    sha256: str
    event: AuditEvent  # the `audit.archived` evidence


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def archived_partition_remove(path: Path, *, lock_timeout_seconds: float = 5.0) -> Removal:
    """Remove the oldest partition of the events once `path` archives exactly its range.

    Refused (RemovalRefused) unless: the events are partitioned; the archive verifies alone
    (both its checkpoints signed with the checkpoint key, every link and hash); it covers exactly
    the oldest partition's range; and the database's next event, the first that remains, links to
    its last hash. Then, in one transaction: the evidence (`audit.archived`: the range, the file's
    SHA-256, the boundary checkpoint), DETACH and DROP. Only the tables' owner can detach and
    drop: the app's role cannot (README, "Database roles")."""
    found = partitions()
    if not found:
        raise RemovalRefused("The events are not partitioned (PostgreSQL only): nothing to remove.")
    report = verify_archive(path)
    if not report.ok:
        raise RemovalRefused(f"Archive {path} does not verify: {report.problem}.")
    oldest = found[0]
    if (report.first_sequence, report.last_sequence) != (
        oldest.from_sequence,
        oldest.last_sequence,
    ):
        raise RemovalRefused(
            f"Archive {path} covers #{report.first_sequence}–#{report.last_sequence}; the oldest "
            f"partition, {oldest.name}, holds #{oldest.from_sequence}–#{oldest.last_sequence}. "
            "Only the oldest partition is removed, and only with an archive of exactly its "
            "range (archive_audit --partition oldest)."
        )
    if not report.links_to_database:
        raise RemovalRefused(
            f"The database holds no event {report.last_sequence + 1} linking to the archive: the "
            "chain must have passed the partition before it is removed."
        )
    boundary = _trailer(path)["checkpoint"]
    sha256 = _sha256(path)
    with transaction.atomic(), connection.cursor() as cursor:
        # The chain head first (as every append), then the table: appends wait at most this
        # long for the catalog change, and DETACH does not queue behind a long reader forever.
        cursor.execute("SET LOCAL lock_timeout = %s", [f"{int(lock_timeout_seconds * 1000)}ms"])
        event = record(
            actor=Actor.system("drop_audit_partition"),
            verb="audit.archived",
            data={
                "partition": oldest.name,
                "first_sequence": oldest.from_sequence,
                "last_sequence": oldest.last_sequence,
                "events": report.verified,
                "archive": path.name,
                "archive_sha256": sha256,
                "boundary_checkpoint": boundary,
            },
        )
        table = connection.ops.quote_name(AuditEvent._meta.db_table)
        name = connection.ops.quote_name(oldest.name)
        cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {name}")
        cursor.execute(f"DROP TABLE {name}")
    return Removal(oldest.name, oldest.from_sequence, oldest.last_sequence, sha256, event)


def _trailer(path: Path) -> dict:
    trailer: dict = {}
    for _, document in _documents(path):
        if document.get("type") == TRAILER_TYPE:
            trailer = document
    return trailer
