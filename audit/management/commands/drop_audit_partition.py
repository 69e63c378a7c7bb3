from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from audit.archive import RemovalRefused, archived_partition_remove
from audit.models import AuditEvent
from audit.partitions import partitions


class Command(BaseCommand):
    help = (
        "Remove the oldest partition of the evidence log (PostgreSQL), once an archive of "
        "exactly its range verifies (archive_audit --partition oldest): records `audit.archived` "
        "with the range, the file's SHA-256 and the boundary checkpoint, then DETACHes and DROPs "
        "the partition. Run as the tables' owner: the app's role cannot. --list shows the "
        "partitions."
    )

    def add_arguments(self, parser):
        parser.add_argument("--archive", metavar="FILE", help="the archive of the oldest partition")
        parser.add_argument("--list", action="store_true", help="list the partitions and stop")
        parser.add_argument(
            "--lock-timeout",
            type=float,
            default=5.0,
            metavar="SECONDS",
            help="give up (changing nothing) if the table cannot be locked this soon (default 5)",
        )

    def handle(self, *args, **options):
        if options["list"]:
            for partition in partitions():
                held = AuditEvent.objects.filter(
                    sequence__gte=partition.from_sequence, sequence__lt=partition.to_sequence
                ).values_list("sequence", "occurred_at")
                first, last = held.order_by("sequence").first(), held.order_by("-sequence").first()
                span = (
                    f"{first[1]:%Y-%m-%d %H:%M} – {last[1]:%Y-%m-%d %H:%M} UTC"
                    if first
                    else "empty"
                )
                self.stdout.write(
                    f"{partition.name}\t#{partition.from_sequence}–#{partition.last_sequence}\t"
                    f"{span}"
                )
            return
        if not options["archive"]:
            raise CommandError("--archive FILE is required (or --list).")
        path = Path(options["archive"])
        if not path.is_file():
            raise CommandError(f"--archive {str(path)!r} is not a readable file.")
        try:
            removal = archived_partition_remove(path, lock_timeout_seconds=options["lock_timeout"])
        except RemovalRefused as refusal:
            raise CommandError(f"Nothing removed: {refusal}")
        except DatabaseError as exc:  # not the owner; lock_timeout (a reader held the table)
            raise CommandError(f"Nothing removed (rolled back): {exc}".strip())
        self.stdout.write(
            f"Removed {removal.partition} (events #{removal.first_sequence}–"
            f"#{removal.last_sequence}), archived in {path} (SHA-256 {removal.sha256}); "
            f"evidence: event #{removal.event.sequence} audit.archived."
        )
