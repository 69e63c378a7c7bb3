from django.core.management.base import BaseCommand

from approvals.tokens import signing_key_rotate
from audit.services import Actor


class Command(BaseCommand):
    help = "Make a new current signing key; the old one keeps verifying live tokens."

    def handle(self, *args, **options):
        key = signing_key_rotate(actor=Actor.system("rotate_signing_key"))
        self.stdout.write(f"New current signing key: {key.kid}")
