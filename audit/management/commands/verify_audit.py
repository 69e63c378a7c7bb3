from django.core.management.base import BaseCommand, CommandError

from audit.services import verify_chain


class Command(BaseCommand):
    help = "Walk the evidence log's hash chain; exit non-zero naming the first event that fails."

    def handle(self, *args, **options):
        report = verify_chain()
        if not report.ok:
            raise CommandError(
                f"Audit chain broken at sequence {report.first_bad_sequence}: {report.problem} "
                f"({report.verified} events verified before it)."
            )
        self.stdout.write(f"Audit chain intact: {report.verified} events verified.")
