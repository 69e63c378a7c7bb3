"""Run the review sweep once, now (what beat runs every CUSTODY_LIFECYCLE_SWEEP_SECONDS): open
the reviews that are due; escalate, then expire, the ones nobody answered."""

from django.core.management.base import BaseCommand

from approvals.services.reviews import reviews_sweep


class Command(BaseCommand):
    help = "Open due reviews; escalate and expire unanswered ones."

    def handle(self, *args, **options):
        result = reviews_sweep()
        self.stdout.write(", ".join(f"{count} {what}" for what, count in result.items()) + ".")
