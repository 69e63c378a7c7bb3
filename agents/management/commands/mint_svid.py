from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from agents.dev_identity import DevIdentityRefused, ensure_dev_trust_domain, mint_svid


class Command(BaseCommand):
    help = (
        "Print a JWT-SVID for an agent, signed by the local development trust domain (DEBUG only):"
        " a login by default, or with --for-delegation the actor token for one delegation."
    )

    def add_arguments(self, parser):
        parser.add_argument("spiffe_id")
        parser.add_argument(
            "--ttl",
            type=int,
            default=None,
            help="lifetime in seconds (default 300, or the maximum for an actor token; at most "
            "CUSTODY_LOGIN_TOKEN_MAX_SECONDS, or CUSTODY_DELEGATION_TOKEN_MAX_SECONDS)",
        )
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--audience", default=None, help="the audience (default: a login's)")
        which.add_argument(
            "--for-delegation",
            action="store_true",
            help="an actor token for POST /api/v1/token (the delegation audience, accepted once)",
        )

    def handle(self, *args, spiffe_id, ttl, audience, for_delegation, **options):
        if not settings.DEBUG:
            raise CommandError(
                "mint_svid runs only with DEBUG=true: it registers and signs for the development "
                "trust domain, which must never exist in production."
            )
        if for_delegation:
            audience = settings.CUSTODY_DELEGATION_AUDIENCE
        delegation = audience == settings.CUSTODY_DELEGATION_AUDIENCE
        maximum = (
            settings.CUSTODY_DELEGATION_TOKEN_MAX_SECONDS
            if delegation
            else settings.CUSTODY_LOGIN_TOKEN_MAX_SECONDS
        )
        if ttl is None:
            ttl = min(300, maximum)
        if not 1 <= ttl <= maximum:
            kind = "an actor token" if delegation else "a login SVID"
            raise CommandError(f"--ttl must be between 1 and {maximum} seconds for {kind}.")
        try:
            ensure_dev_trust_domain()
            token = mint_svid(spiffe_id, ttl_seconds=ttl, audience=audience)
        except DevIdentityRefused as exc:
            raise CommandError(str(exc)) from exc
        except (ValueError, ValidationError) as exc:
            message = exc.messages[0] if isinstance(exc, ValidationError) else str(exc)
            raise CommandError(message) from exc
        self.stdout.write(token)
