"""A DRF authentication class for resource servers built with Django REST framework.

    # settings.py
    CUSTODY_VERIFIER = "myproject.custody.verifier"   # a Verifier instance, by dotted path
    REST_FRAMEWORK = {"DEFAULT_AUTHENTICATION_CLASSES": [
        "custody_client.django.CustodyTokenAuthentication"]}

`request.user` is a CustodyPrincipal (the acting agent, authenticated), `request.auth` the
VerifiedToken: `request.auth.require_scope("payments-db:write")`.
"""

from __future__ import annotations

from dataclasses import dataclass

from custody_client.verify import TokenRejected, VerifiedToken, Verifier


@dataclass(frozen=True)
class CustodyPrincipal:
    token: VerifiedToken
    is_authenticated: bool = True
    is_anonymous: bool = False
    is_staff: bool = False
    is_superuser: bool = False

    @property
    def spiffe_id(self) -> str:
        return self.token.acting_agent

    def __str__(self) -> str:
        return self.spiffe_id


def _configured_verifier() -> Verifier:
    from django.conf import settings
    from django.utils.module_loading import import_string

    configured = settings.CUSTODY_VERIFIER
    return import_string(configured) if isinstance(configured, str) else configured


try:
    from rest_framework.authentication import BaseAuthentication
    from rest_framework.exceptions import AuthenticationFailed
except ImportError:  # DRF is optional: only this class needs it
    BaseAuthentication = object  # type: ignore[assignment,misc]
    AuthenticationFailed = None  # type: ignore[assignment]


class CustodyTokenAuthentication(BaseAuthentication):
    """Bearer Custody access tokens, verified locally (revocation events honoured)."""

    verifier: Verifier | None = None  # or settings.CUSTODY_VERIFIER

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, bearer = header.partition(" ")
        if scheme.lower() != "bearer" or not bearer.strip():
            return None
        verifier = self.verifier or _configured_verifier()
        try:
            token = verifier.verify(bearer.strip())
        except TokenRejected as exc:
            raise AuthenticationFailed(f"Custody token refused: {exc.reason}.")
        return CustodyPrincipal(token=token), token

    def authenticate_header(self, request):
        return 'Bearer realm="custody"'
