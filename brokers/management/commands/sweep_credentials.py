from django.core.management.base import BaseCommand

from brokers.models import BrokeredCredential
from brokers.services import credentials_sweep


class Command(BaseCommand):
    help = (
        "Destroy, here and now, every brokered credential whose destruction is due (what the "
        "beat sweep hands to the workers), e.g. once a target is back after an outage."
    )

    def handle(self, *args, **options):
        attempted = credentials_sweep(inline=True)
        pending = BrokeredCredential.objects.filter(
            state=BrokeredCredential.State.DESTROY_PENDING
        ).count()
        self.stdout.write(
            f"{attempted} destruction(s) attempted; {pending} credential(s) still pending."
        )
