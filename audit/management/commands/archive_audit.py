from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.archive import archive_lines, signed_checkpoints
from audit.models import AuditChainHead, AuditEvent
from audit.partitions import partitions


class Command(BaseCommand):
    help = (
        "Write the events of one month (from the signed checkpoint before it to the last signed "
        "checkpoint in it) to a JSON Lines archive that verifies without the database "
        "(`verify_audit --archive FILE`). Nothing is removed from the database."
    )

    def add_arguments(self, parser):
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--month", help="YYYY-MM (UTC)")
        which.add_argument(
            "--partition",
            metavar="NAME",
            help="PostgreSQL: exactly the range of one partition of the events (the unit "
            "drop_audit_partition removes; `--partition oldest` for the oldest)",
        )
        parser.add_argument("--out", required=True, help="the archive file to write")

    def handle(self, *args, **options):
        if options["partition"]:
            after, through = self._partition_range(options["partition"])
            return self._write(after, through, Path(options["out"]))
        try:
            start = datetime.strptime(options["month"], "%Y-%m").replace(tzinfo=UTC)
        except ValueError:
            raise CommandError(f"--month {options['month']!r} is not a month such as 2026-01.")
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        signed = signed_checkpoints()
        times = dict(
            AuditEvent.objects.filter(sequence__in=[c.sequence for c in signed]).values_list(
                "sequence", "occurred_at"
            )
        )
        before = [c for c in signed if c.sequence in times and times[c.sequence] < start]
        within = [c for c in signed if c.sequence in times and start <= times[c.sequence] < end]
        if not within:
            raise CommandError(
                f"No signed checkpoint falls in {options['month']}: nothing can be archived "
                "so that it verifies."
            )
        self._write(before[-1] if before else None, within[-1], Path(options["out"]))

    def _partition_range(self, name: str):
        """The signed checkpoints just before a partition and at its last event."""
        found = partitions()
        if not found:
            raise CommandError("The events are not partitioned (PostgreSQL only).")
        partition = (
            found[0] if name == "oldest" else next((p for p in found if p.name == name), None)
        )
        if partition is None:
            names = ", ".join(p.name for p in found[:5])
            raise CommandError(f"No partition {name!r} (the oldest: {names}).")
        head = AuditChainHead.objects.filter(id=1).values_list("last_sequence", flat=True).first()
        if (head or 0) <= partition.last_sequence:
            raise CommandError(
                f"{partition.name} (#{partition.from_sequence}–#{partition.last_sequence}) is "
                "still being written: only a partition the chain has passed can be archived."
            )
        signed = {checkpoint.sequence: checkpoint for checkpoint in signed_checkpoints()}
        wanted = [partition.from_sequence - 1, partition.last_sequence]
        missing = [sequence for sequence in wanted if sequence and sequence not in signed]
        if missing:
            raise CommandError(
                f"No signed checkpoint at #{missing[0]} in {settings.CUSTODY_CHECKPOINT_FILE}: "
                "the publisher signs each partition's last event once the chain has passed it "
                "(publish_checkpoint)."
            )
        return signed.get(wanted[0]), signed[wanted[1]]

    def _write(self, after, through, out: Path) -> None:
        if out.exists():
            raise CommandError(f"--out {str(out)!r} exists: archives are never overwritten.")
        count = 0
        with out.open("x", encoding="utf-8") as handle:
            for line in archive_lines(after=after, through=through):
                handle.write(line)
                count += 1
        first = after.sequence + 1 if after else 1
        self.stdout.write(
            f"Archived events #{first}–#{through.sequence} ({count - 2} events) to {out}, "
            f"ending at the signed checkpoint at #{through.sequence}."
        )
