from django.core.management.base import BaseCommand, CommandError

from audit.services import checkpoint_publish


class Command(BaseCommand):
    help = (
        "Sign (sequence, hash) of the audit chain head with the checkpoint key and publish it "
        "(JSON Lines file, log, /api/v1/audit/checkpoints/latest). Beat does this every "
        "CUSTODY_CHECKPOINT_SECONDS; exits non-zero, signing nothing, if the chain does not "
        "verify from the previous checkpoint."
    )

    def handle(self, *args, **options):
        result = checkpoint_publish()
        if result.document is not None:
            self.stdout.write(
                f"Checkpoint published at sequence {result.document['sequence']} "
                f"({result.report.verified} events verified since the previous one)."
            )
        elif result.report.ok:
            self.stdout.write(f"No checkpoint published: {result.report.problem}.")
        else:
            raise CommandError(
                f"Audit chain broken at sequence {result.report.first_bad_sequence}: "
                f"{result.report.problem}. No checkpoint signed."
            )
