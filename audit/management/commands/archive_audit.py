from datetime import UTC, datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.archive import archive_lines, signed_checkpoints
from audit.models import AuditEvent


class Command(BaseCommand):
    help = (
        "Write the events of one month (from the signed checkpoint before it to the last signed "
        "checkpoint in it) to a JSON Lines archive that verifies without the database "
        "(`verify_audit --archive FILE`). Nothing is removed from the database."
    )

    def add_arguments(self, parser):
        parser.add_argument("--month", required=True, help="YYYY-MM (UTC)")
        parser.add_argument("--out", required=True, help="the archive file to write")

    def handle(self, *args, **options):
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
        after, through = (before[-1] if before else None), within[-1]
        out = Path(options["out"])
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
