from django.core.management.base import BaseCommand

from brokers.services import credentials_sweep


class Command(BaseCommand):
    help = (
        "Destroy, here and now, every brokered credential whose destruction is due (what the "
        "beat sweep hands to the workers), e.g. once a target is back after an outage."
    )

    def handle(self, *args, **options):
        count = credentials_sweep(inline=True)
        self.stdout.write(f"{count} destruction(s) attempted.")
