"""A local development trust domain, so the demo and tests need no SPIRE server.

Its private key is generated once under var/ (never committed); `mint_svid` signs JWT-SVIDs with
it and the matching public JWKS is registered as an ordinary TrustDomain.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.db import transaction

from agents.jwks import jwk_thumbprint
from agents.models import TrustDomain
from agents.spiffe import parse_spiffe_id
from audit.services import Actor, record


def load_or_create_dev_key() -> ec.EllipticCurvePrivateKey:
    path = settings.CUSTODY_DEV_KEY_FILE
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole to a file of its own, then linked into place: of two first mints at
        # once (the dev SVID endpoint's threads), one key wins and both sign with it.
        fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=".dev-key-")
        try:
            os.write(fd, pem)
            os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(scratch, path)
        finally:
            os.unlink(scratch)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def public_jwk(private_key, *, alg: str = "ES256") -> dict:
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": alg, "use": "sig"}


class DevIdentityRefused(Exception):
    """The development trust domain is never registered or used with DEBUG off."""


def require_debug() -> None:
    if not settings.DEBUG:
        raise DevIdentityRefused(
            "The development trust domain is for development only: it would let anyone holding "
            "var/'s key log in as any of its agents. Run with DEBUG=true (never in production)."
        )


def ensure_dev_trust_domain() -> TrustDomain:
    require_debug()
    key = load_or_create_dev_key()
    jwks = {"keys": [public_jwk(key)]}
    with transaction.atomic():
        domain, created = TrustDomain.objects.select_for_update().get_or_create(
            name=settings.CUSTODY_DEV_TRUST_DOMAIN,
            defaults={"kind": TrustDomain.Kind.SPIFFE, "jwks": jwks},
        )
        if created or domain.jwks != jwks:
            domain.jwks = jwks
            domain.save(update_fields=["jwks"])
            record(
                actor=Actor.system("dev-trust-domain"),
                verb="trust_domain.keys_updated",
                data={"trust_domain": domain.name, "kids": [k["kid"] for k in jwks["keys"]]},
            )
    return domain


def mint_svid(spiffe_id: str, *, ttl_seconds: int = 300, audience: str | None = None) -> str:
    """A login SVID by default; `audience=settings.CUSTODY_DELEGATION_AUDIENCE` makes the
    sub-agent's actor token for one delegation."""
    require_debug()
    parsed = parse_spiffe_id(spiffe_id)
    if parsed.trust_domain != settings.CUSTODY_DEV_TRUST_DOMAIN:
        raise ValueError(
            f"mint_svid signs only for the development trust domain "
            f"{settings.CUSTODY_DEV_TRUST_DOMAIN!r}, not {parsed.trust_domain!r}."
        )
    key = load_or_create_dev_key()
    now = int(time.time())
    claims = {
        "sub": spiffe_id,
        "aud": [audience or settings.CUSTODY_AUDIENCE],
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(
        claims, key, algorithm="ES256", headers={"kid": public_jwk(key)["kid"], "typ": "JWT"}
    )
