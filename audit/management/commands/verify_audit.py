from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.services import verify_chain


class Command(BaseCommand):
    help = (
        "Walk the evidence log's hash chain and hold it against the signed checkpoints (the "
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

    def handle(self, *args, **options):
        against = [Path(name) for name in options["against"]]
        for path in against:
            if not path.is_file():
                raise CommandError(f"--against {str(path)!r} is not a readable file.")
        report = verify_chain(against=against)
        if not report.ok:
            raise CommandError(
                f"Audit chain broken at sequence {report.first_bad_sequence}: {report.problem} "
                f"({report.verified} events verified before it)."
            )
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
