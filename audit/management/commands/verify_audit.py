import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.archive import verify_archive
from audit.verification import verify


class Command(BaseCommand):
    help = (
        "Verify the evidence log's hash chain from the newest signed checkpoint to the head "
        "(--full: from the first event), holding it against the signed checkpoints (the "
        "published file, the database's copies, and any --against file); exit non-zero naming "
        "the first event that fails."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--against",
            action="append",
            default=[],
            metavar="FILE",
            help="a JSON Lines file of checkpoints kept outside Custody (e.g. pinned by a "
            "monitor from /api/v1/audit/checkpoints/latest); may be repeated",
        )
        parser.add_argument(
            "--archive",
            action="append",
            default=[],
            metavar="FILE",
            help="verify an archive written by archive_audit (alone, then its link to the "
            "database's next event) instead of the database's chain; may be repeated",
        )
        parser.add_argument(
            "--full",
            action="store_true",
            help="walk every event from the first, against every checkpoint: the only walk that "
            "sees an edit before the newest checkpoint that left the later hashes alone",
        )

    def handle(self, *args, **options):
        if options["archive"]:
            return self._archives([Path(name) for name in options["archive"]])
        against = [Path(name) for name in options["against"]]
        for path in against:
            if not path.is_file():
                raise CommandError(f"--against {str(path)!r} is not a readable file.")

        def progress(started_after: int, verified: int) -> None:
            if options["verbosity"] >= 2:
                self.stderr.write(f"  #{started_after + verified:,} reached …")

        started = time.monotonic()
        report = verify(full=options["full"], against=against, progress=progress)
        seconds = time.monotonic() - started
        if not report.ok:
            raise CommandError(
                f"Audit chain broken at sequence {report.first_bad_sequence}: {report.problem} "
                f"({report.verified} events verified before it)."
            )
        if report.started_after and options["full"]:
            self.stdout.write(
                f"Audit chain intact: {report.verified} events verified after the signed "
                f"checkpoint at sequence {report.started_after}: the events up to it were "
                "archived and removed (verify_audit --archive checks their archives)."
            )
        elif report.started_after:
            self.stdout.write(
                f"Audit chain intact: {report.verified} events verified after the signed "
                f"checkpoint at sequence {report.started_after}, which vouches for every event "
                "up to it (--full walks those too)."
            )
        else:
            self.stdout.write(f"Audit chain intact: {report.verified} events verified.")
            if report.checkpoints:
                self.stdout.write(
                    f"It matches all {report.checkpoints} checkpoints; the latest, at sequence "
                    f"{report.latest_checkpoint}, is signed with the checkpoint key."
                )
            else:
                self.stderr.write(
                    f"No signed checkpoint to hold it against (none in "
                    f"{settings.CUSTODY_CHECKPOINT_FILE}): only its internal links were checked."
                )
        rate = report.verified / seconds if seconds > 0 else 0.0
        self.stderr.write(
            f"Walked {report.verified} events in {seconds:.2f} s ({rate:,.0f} events/s)."
        )

    def _archives(self, paths: list[Path]) -> None:
        for path in paths:
            if not path.is_file():
                raise CommandError(f"--archive {str(path)!r} is not a readable file.")
            report = verify_archive(path)
            if not report.ok:
                raise CommandError(f"Archive {path} broken: {report.problem}.")
            link = (
                f"; the database's event {report.last_sequence + 1} links to it"
                if report.links_to_database
                else ""
            )
            self.stdout.write(
                f"Archive {path} intact: {report.verified} events #{report.first_sequence}–"
                f"#{report.last_sequence}, ending at the signed checkpoint at "
                f"#{report.last_sequence}{link}."
            )
