from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from agents.dev_identity import ensure_dev_trust_domain, mint_svid


class Command(BaseCommand):
    help = "Print a JWT-SVID for an agent, signed by the local development trust domain."

    def add_arguments(self, parser):
        parser.add_argument("spiffe_id")
        parser.add_argument("--ttl", type=int, default=300, help="lifetime in seconds (max 3600)")
        parser.add_argument("--audience", default=None)

    def handle(self, *args, spiffe_id, ttl, audience, **options):
        if not 1 <= ttl <= 3600:
            raise CommandError("--ttl must be between 1 and 3600 seconds.")
        ensure_dev_trust_domain()
        try:
            token = mint_svid(spiffe_id, ttl_seconds=ttl, audience=audience)
        except (ValueError, ValidationError) as exc:
            message = exc.messages[0] if isinstance(exc, ValidationError) else str(exc)
            raise CommandError(message) from exc
        self.stdout.write(token)
