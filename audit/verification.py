"""Walking the chain at 10M events: incrementally from the last signed checkpoint, or in full, in
a worker that reports progress (a `ChainCheck` row the audit page polls).

Where verification got to is not a row anyone could edit: it is the newest published checkpoint
whose Ed25519 signature verifies with the key the database does not hold. The publisher signs a
checkpoint only after checking every link from the previous one to the head it signs, so a
signed checkpoint at N vouches for the chain up to N. The incremental walk checks that event N
still has the signed hash and its content still hashes to it (any rewrite before N that
recomputed the later hashes changes N's: caught), then every link from N to the head. What it
cannot see is an edit before N that left every later hash alone: that breaks a link before N,
which only `--full` (beat runs it daily) walks.

Rows are read as tuples and hashed with `audit.models.chain_hash` (no model instances). The
walk reads in autocommit, in batches, up to the head it read at the start; appends go on
meanwhile (an honest head, read after the last event, is never behind it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from audit import checkpoints
from audit.models import (
    GENESIS_HASH,
    HASHED_FIELDS,
    AuditChainHead,
    AuditCheckpoint,
    AuditEvent,
    ChainCheck,
    chain_hash,
)
from audit.services import (
    ChainReport,
    _published_checkpoints,
    history_missing,
    oldest_sequence,
)

logger = logging.getLogger("custody.audit.chain")

Progress = Callable[[int, int], None]  # (the sequence the walk started after, events verified)
Published = dict[int, list[checkpoints.Checkpoint]]
COLUMNS = (*HASHED_FIELDS, "hash")


def _refused(verified: int, checkpoint: checkpoints.Checkpoint, exc: ValueError) -> ChainReport:
    verified = min(verified, checkpoint.sequence - 1)  # the events it was to vouch for
    return ChainReport(verified, checkpoint.sequence, f"checkpoint refused: {exc}")


def _newest_published(against: Iterable[Path]) -> Published:
    """The newest checkpoint of each source (the published file's last line, the newest
    database copy, each --against file's newest), signatures not yet checked. Reading a year of
    minutely checkpoints would cost more than the incremental walk itself."""
    found: list[checkpoints.Checkpoint] = []
    path = Path(settings.CUSTODY_CHECKPOINT_FILE)
    last = checkpoints.last_in_file(path)
    if last is not None:
        found.append(checkpoints.parse_document(last, f"{path}:last line"))
    for extra in against:
        try:
            pinned = checkpoints.read_file(extra)
        except OSError as exc:
            raise ValueError(f"{extra}: cannot be read ({exc.strerror})")
        if pinned:
            found.append(max(pinned, key=lambda checkpoint: checkpoint.sequence))
    copy = AuditCheckpoint.objects.order_by("-sequence").first()
    if copy is not None:
        found.append(checkpoints.parse_document(copy.document, "database copy"))
    by_sequence: Published = {}
    for checkpoint in found:
        by_sequence.setdefault(checkpoint.sequence, []).append(checkpoint)
    return by_sequence


def verify(
    *,
    full: bool,
    against: Iterable[Path] = (),
    progress: Progress | None = None,
    batch_size: int = 5000,
) -> ChainReport:
    """Verify the chain, from the genesis (`full`) or from the newest signed checkpoint.

    The report's `started_after` is the sequence the walk trusted without walking (0 for full);
    `verified` counts the events walked after it."""
    against = list(against)
    try:
        published = _published_checkpoints(against) if full else _newest_published(against)
    except ValueError as exc:
        return ChainReport(0, 0, f"checkpoint refused: {exc}")
    # The head is read after the checkpoints, so every honest checkpoint is at or below it.
    head = AuditChainHead.objects.filter(id=1).first()
    start_sequence, start_hash = 0, GENESIS_HASH
    oldest = oldest_sequence()
    if not full and published and max(published) < oldest:
        # The newest checkpoint is in an archived and removed range (or at its boundary): the
        # full walk finds the boundary checkpoint among all of them.
        return verify(full=True, against=against, progress=progress, batch_size=batch_size)
    if full and oldest > 1:
        # Events before `oldest` were archived and removed (drop_audit_partition): the walk
        # starts from the signed checkpoint at the boundary, as an incremental walk starts from
        # the newest. Without one that verifies, the missing events are what they look like.
        boundary = oldest - 1
        for checkpoint in published.get(boundary, ()):
            try:
                checkpoint.check_signature()
            except ValueError as exc:
                return _refused(0, checkpoint, exc)
            start_sequence, start_hash = boundary, checkpoint.hash
        if not start_sequence:
            return history_missing(oldest)
        if len({checkpoint.hash for checkpoint in published.get(boundary, ())}) > 1:
            return ChainReport(
                0, boundary, f"signed checkpoints at {boundary} disagree", started_after=boundary
            )
        published = {
            sequence: found for sequence, found in published.items() if sequence > boundary
        }
    if not full and published:
        anchor_sequence = max(published)
        claimed = published[anchor_sequence]
        row = AuditEvent.objects.filter(sequence=anchor_sequence).values_list(*COLUMNS).first()
        if row is None:
            try:
                claimed[0].check_signature()
            except ValueError as exc:
                return _refused(0, claimed[0], exc)
            last = AuditEvent.objects.aggregate(last=Max("sequence"))["last"] or 0
            return ChainReport(
                0,
                last + 1,
                f"events after {last} removed: checkpoint at {anchor_sequence} exists "
                f"({claimed[0].source})",
                started_after=anchor_sequence,
            )
        fields = dict(zip(COLUMNS, row, strict=True))
        stored_hash = fields.pop("hash")
        # A signed checkpoint that no longer matches its event first (a rewrite, rehashed to the
        # head): the full walk names the first checkpoint that no longer holds. Then every copy
        # that matches must itself be signed: a forged one proves nothing.
        for checkpoint in sorted(claimed, key=lambda c: c.hash == stored_hash):
            try:
                checkpoint.check_signature()
            except ValueError as exc:
                return _refused(0, checkpoint, exc)
            if checkpoint.hash != stored_hash:
                return verify(full=True, against=against, progress=progress, batch_size=batch_size)
        if chain_hash(fields) != stored_hash:
            return ChainReport(
                0,
                anchor_sequence,
                "content does not match its hash",
                started_after=anchor_sequence - 1,
            )
        start_sequence, start_hash = anchor_sequence, stored_hash
        published = {}  # the anchor was the newest: nothing beyond it to hold the walk against
    return _walk(published, start_sequence, start_hash, head, progress, batch_size)


def _walk(
    published: Published,
    start_sequence: int,
    start_hash: str,
    head: AuditChainHead | None,
    progress: Progress | None,
    batch_size: int,
) -> ChainReport:
    """Every link after `start_sequence` up to the head read at the start, each event's content
    against its hash, each published checkpoint on the way against its event."""
    started = dict(started_after=start_sequence)
    expected_previous, expected_sequence = start_hash, start_sequence + 1
    verified, last_sequence = 0, start_sequence
    matched: list[checkpoints.Checkpoint] = []  # the checkpoints at the latest sequence that held
    held = 0
    end = head.last_sequence if head is not None else None
    while True:
        rows = AuditEvent.objects.filter(sequence__gt=last_sequence).order_by("sequence")
        if end is not None:
            rows = rows.filter(sequence__lte=end)
        batch = list(rows.values_list(*COLUMNS)[:batch_size])
        if not batch:
            break
        for row in batch:
            fields = dict(zip(COLUMNS, row, strict=True))
            stored_hash = fields.pop("hash")
            sequence = fields["sequence"]
            if sequence != expected_sequence:
                return ChainReport(
                    verified, expected_sequence, "missing event (gap in sequence)", **started
                )
            if fields["previous_hash"] != expected_previous:
                return ChainReport(verified, sequence, "previous hash does not match", **started)
            if chain_hash(fields) != stored_hash:
                return ChainReport(verified, sequence, "content does not match its hash", **started)
            claimed = published.get(sequence, ())
            for checkpoint in claimed:
                if checkpoint.hash == stored_hash:
                    continue
                try:
                    checkpoint.check_signature()
                except ValueError as exc:
                    return _refused(verified, checkpoint, exc)
                since = (
                    f"the last checkpoint that holds is at {matched[0].sequence}"
                    if matched
                    else "no earlier checkpoint holds"
                )
                return ChainReport(
                    verified,
                    sequence,
                    f"content rewritten at or before sequence {sequence}: checkpoint hash "
                    f"mismatch ({checkpoint.source}); {since}",
                    **started,
                )
            if claimed:
                matched = list(claimed)
                held += 1
            expected_previous = stored_hash
            expected_sequence += 1
            verified += 1
        last_sequence = batch[-1][0]
        if progress is not None:
            progress(start_sequence, verified)
    beyond = max(published, default=0)
    if beyond > last_sequence:
        checkpoint = published[beyond][0]
        try:
            checkpoint.check_signature()
        except ValueError as exc:
            return _refused(verified, checkpoint, exc)
        return ChainReport(
            verified,
            last_sequence + 1,
            f"events after {last_sequence} removed: checkpoint at {beyond} exists "
            f"({checkpoint.source})",
            **started,
        )
    if head is not None and head.last_sequence > last_sequence:
        return ChainReport(
            verified, last_sequence + 1, "events after this point were removed", **started
        )
    # Events past the head read at the start: appended since (the head has moved on with them),
    # or the head was reset behind the log. The head is read after the last event, so an honest
    # head is at or past it.
    newest = AuditEvent.objects.aggregate(last=Max("sequence"))["last"] or 0
    now_head = AuditChainHead.objects.filter(id=1).first()
    if now_head is not None and now_head.last_sequence < newest:
        return ChainReport(
            verified,
            now_head.last_sequence + 1,
            f"chain head reset to {now_head.last_sequence} while events run to {newest}",
            **started,
        )
    if head is not None and head.last_hash != expected_previous:
        return ChainReport(
            verified,
            last_sequence,
            f"chain head hash does not match event {last_sequence}",
            **started,
        )
    # The latest checkpoint that held vouches for every event up to it (each hash covers the
    # one before), so its signature is the one that must verify.
    for checkpoint in matched:
        try:
            checkpoint.check_signature()
        except ValueError as exc:
            return _refused(verified, checkpoint, exc)
    latest = matched[0].sequence if matched else (start_sequence or None)
    return ChainReport(
        verified, None, checkpoints=held + bool(start_sequence), latest_checkpoint=latest, **started
    )


# --- the job: one walk at a time, in a worker, with progress ------------------------------------


def _abandon_stale() -> None:
    """A walk whose worker died (no progress for CUSTODY_CHAIN_CHECK_STALE_SECONDS) no longer
    blocks the next one."""
    stale_before = timezone.now() - timedelta(seconds=settings.CUSTODY_CHAIN_CHECK_STALE_SECONDS)
    ChainCheck.objects.filter(state=ChainCheck.State.RUNNING, updated_at__lt=stale_before).update(
        state=ChainCheck.State.ABANDONED,
        finished_at=timezone.now(),
        problem="the worker stopped reporting progress",
    )


def chain_check_start(*, mode: str = ChainCheck.Mode.INCREMENTAL) -> tuple[ChainCheck, bool]:
    """Claim the one running walk: (the new check, True), or (the walk already running, False).

    Concurrent callers race on the unique constraint over running checks, so exactly one row
    is created; the caller that created it runs or enqueues the walk."""
    _abandon_stale()
    try:
        with transaction.atomic():
            return ChainCheck.objects.create(state=ChainCheck.State.RUNNING, mode=mode), True
    except IntegrityError:
        running = ChainCheck.objects.filter(state=ChainCheck.State.RUNNING).first()
        if running is None:  # it finished between our insert and this read: start again
            return chain_check_start(mode=mode)
        return running, False


def chain_check_request(*, mode: str = ChainCheck.Mode.INCREMENTAL) -> tuple[ChainCheck, bool]:
    """ "Verify now": claim the walk and have a worker run it once this transaction commits."""
    check, created = chain_check_start(mode=mode)
    if created:
        from celery import current_app

        check_id = check.pk
        transaction.on_commit(
            lambda: current_app.send_task("audit.tasks.run_chain_check", args=[check_id])
        )
    return check, created


def chain_check_execute(
    check_id: int, *, against: Iterable[Path] = (), batch_size: int = 5000
) -> ChainCheck:
    """Walk the chain for a claimed check, recording progress on its row as it goes. Safe to
    run twice: a check no longer running is returned as it is."""
    check = ChainCheck.objects.get(pk=check_id)
    if check.state != ChainCheck.State.RUNNING:
        return check
    head = AuditChainHead.objects.filter(id=1).values_list("last_sequence", flat=True).first()
    ChainCheck.objects.filter(pk=check_id).update(target=head or 0, updated_at=timezone.now())

    def progress(started_after: int, verified: int) -> None:  # once a batch (5,000 events)
        ChainCheck.objects.filter(pk=check_id, state=ChainCheck.State.RUNNING).update(
            started_after=started_after, verified=verified, updated_at=timezone.now()
        )

    started = time.monotonic()
    report = verify(
        full=check.mode == ChainCheck.Mode.FULL,
        against=against,
        progress=progress,
        batch_size=batch_size,
    )
    seconds = time.monotonic() - started
    ChainCheck.objects.filter(pk=check_id).update(
        state=ChainCheck.State.DONE,
        verified=report.verified,
        started_after=report.started_after,
        first_bad_sequence=report.first_bad_sequence,
        problem=report.problem[:200],
        finished_at=timezone.now(),
        updated_at=timezone.now(),
    )
    check.refresh_from_db()
    if not check.ok:  # whoever is on call must hear of it, not only the audit page
        logger.error(
            "Audit chain BROKEN at sequence %s: %s",
            report.first_bad_sequence,
            report.problem,
            extra={"event": "audit.chain_broken", "first_bad_sequence": report.first_bad_sequence},
        )
    else:
        logger.info(
            "Audit chain verified (%s): %s events after #%s in %.1f s",
            check.mode,
            report.verified,
            report.started_after,
            seconds,
        )
    return check
