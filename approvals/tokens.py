"""Custody's access tokens: ES256 JWTs (typ `at+jwt`, RFC 9068) bound to one grant and one task.

Private keys are stored encrypted with a key derived from SECRET_KEY (Fernet), so a database dump
alone cannot mint tokens. They decrypt under SECRET_KEY or any of SECRET_KEY_FALLBACKS
(MultiFernet), so rotating SECRET_KEY with the old one kept as a fallback never stops issuance.
The current key signs; previous keys stay in the JWKS until tokens they signed have expired,
so rotation never invalidates a live token.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from dataclasses import dataclass

import jwt
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import IntegrityError, transaction

from agents.jwks import jwk_thumbprint
from approvals.lineage import grant_ancestors, grant_approvers
from approvals.models import Grant, SigningKey
from audit.services import record
from core.errors import Unavailable
from core.jwt_memo import VerifiedTokens

TOKEN_TYPE = "at+jwt"
ALGORITHM = "ES256"
# Signing keys are looked up at most this often per process; a just-rotated-out key still
# verifies, so signing with it for a few more seconds is harmless.
_KEY_CACHE_SECONDS = 30
# An operator must act before a signing key that cannot be decrypted works again.
SIGNING_KEY_RETRY_SECONDS = 60
logger = logging.getLogger(__name__)
_current_cache: tuple[float, str, object] | None = None
_public_cache: dict[str, tuple[float, object]] = {}
# Access tokens verified in this process (introspection sees the same token per tool call).
_verified = VerifiedTokens()


def _fernet_for(secret: str) -> Fernet:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"custody-signing-keys", info=b"v1"
    ).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def _fernet() -> MultiFernet:
    """Encrypts under SECRET_KEY; decrypts under it or any of SECRET_KEY_FALLBACKS. The token
    format is Fernet's either way, so keys stored before MultiFernet need no migration."""
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return MultiFernet([_fernet_for(secret) for secret in secrets])


class SigningKeyUnavailable(Unavailable):
    """The current signing key cannot be decrypted with SECRET_KEY or its fallbacks: an
    operator must act, so the answer is a 503 that says what to do, never a 500."""

    code = "signing_key_unavailable"


def signing_key_create(*, state: str = SigningKey.State.CURRENT) -> SigningKey:
    private_key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    kid = jwk_thumbprint(jwk)
    return SigningKey.objects.create(
        kid=kid,
        algorithm=ALGORITHM,
        state=state,
        public_jwk={**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"},
        encrypted_private_key=_fernet().encrypt(pem).decode(),
    )


def signing_key_rotate(*, actor) -> SigningKey:
    """New current key; the old current becomes previous; older previous keys retire."""
    global _current_cache
    with transaction.atomic():
        keys = list(
            SigningKey.objects.select_for_update()
            .exclude(state=SigningKey.State.RETIRED)
            .order_by("pk")
        )
        for key in keys:
            if key.state == SigningKey.State.PREVIOUS:
                key.state = SigningKey.State.RETIRED
                key.save(update_fields=["state"])
        for key in keys:
            if key.state == SigningKey.State.CURRENT:
                key.state = SigningKey.State.PREVIOUS
                key.save(update_fields=["state"])
        new_key = signing_key_create()
        record(actor=actor, verb="signing_key.rotated", data={"kid": new_key.kid})
    _current_cache = None
    return new_key


def _current_signing_key() -> tuple[str, object]:
    global _current_cache
    now = time.monotonic()
    if _current_cache is not None and now - _current_cache[0] < _KEY_CACHE_SECONDS:
        return _current_cache[1], _current_cache[2]
    key = SigningKey.objects.filter(state=SigningKey.State.CURRENT).first()
    if key is None:
        try:
            with transaction.atomic():
                key = signing_key_create()
        except IntegrityError:  # another process created it first
            key = SigningKey.objects.get(state=SigningKey.State.CURRENT)
    try:
        pem = _fernet().decrypt(key.encrypted_private_key.encode())
    except InvalidToken as exc:
        logger.error("The current signing key %s cannot be decrypted", key.kid)
        raise SigningKeyUnavailable(
            "Custody cannot sign tokens: its current signing key was encrypted under a "
            "SECRET_KEY that is neither SECRET_KEY nor in SECRET_KEY_FALLBACKS. Put the previous "
            "SECRET_KEY in SECRET_KEY_FALLBACKS, or run `manage.py rotate_signing_key`.",
            retry_after=SIGNING_KEY_RETRY_SECONDS,
        ) from exc
    private_key = serialization.load_pem_private_key(pem, password=None)
    _current_cache = (now, key.kid, private_key)
    return key.kid, private_key


def public_jwks() -> dict:
    keys = SigningKey.objects.exclude(state=SigningKey.State.RETIRED).order_by("-created_at")
    return {"keys": [key.public_jwk for key in keys]}


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: int
    claims: dict


def token_sign(claims: dict, *, lifetime_seconds: int, not_after: int) -> IssuedToken:
    """Sign `claims` with the current key; exp is never later than `not_after` (the grant)."""
    kid, private_key = _current_signing_key()
    now = int(time.time())
    body = {
        "iss": settings.CUSTODY_ISSUER,
        "iat": now,
        "nbf": now,
        "exp": min(now + lifetime_seconds, not_after),
        "jti": uuid.uuid4().hex,
        **claims,
    }
    token = jwt.encode(
        body, private_key, algorithm=ALGORITHM, headers={"kid": kid, "typ": TOKEN_TYPE}
    )
    return IssuedToken(token=token, jti=body["jti"], expires_at=body["exp"], claims=body)


def jwt_sign_typed(body: dict, *, typ: str) -> str:
    """Sign `body` with the current key under another `typ` (a Security Event Token is
    `secevent+jwt`): never an access token, which token_verify accepts only as `at+jwt`."""
    if typ == TOKEN_TYPE:
        raise ValueError("Access tokens are signed by token_sign only.")
    kid, private_key = _current_signing_key()
    return jwt.encode(body, private_key, algorithm=ALGORITHM, headers={"kid": kid, "typ": typ})


class TokenInvalid(Exception):
    pass


def _public_key(kid: str):
    # Cached briefly, so a retired key stops verifying within _KEY_CACHE_SECONDS everywhere.
    now = time.monotonic()
    cached = _public_cache.get(kid)
    if cached is not None and now - cached[0] < _KEY_CACHE_SECONDS:
        return cached[1]
    key = SigningKey.objects.filter(kid=kid).exclude(state=SigningKey.State.RETIRED).first()
    if key is None:
        _public_cache.pop(kid, None)
        raise TokenInvalid("unknown key")
    public = jwt.PyJWK(key.public_jwk, algorithm=ALGORITHM).key
    _public_cache[kid] = (now, public)
    return public


def token_verify(token: str) -> dict:
    """Verify a Custody access token's signature, type, issuer and time. Raise TokenInvalid."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid("not a JWT") from exc
    if header.get("typ") != TOKEN_TYPE or header.get("alg") != ALGORITHM:
        raise TokenInvalid("not a Custody access token")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenInvalid("no kid")
    public = _public_key(kid)  # a retired key stops verifying, remembered or not
    # A kid is its key's thumbprint (signing_key_create), so it names the key material.
    inputs = (kid, settings.CUSTODY_ISSUER)
    claims = _verified.get(token, inputs)
    if claims is not None:
        return claims
    try:
        claims = jwt.decode(
            token,
            public,
            algorithms=[ALGORITHM],
            issuer=settings.CUSTODY_ISSUER,
            options={"require": ["exp", "iat", "jti", "sub", "grant_id"], "verify_aud": False},
        )
    except jwt.PyJWTError as exc:
        raise TokenInvalid(str(exc)) from exc
    _verified.put(token, inputs, claims)
    return claims


def token_claims(grant: Grant) -> dict:
    """What a token for this grant says: its scope, task, approvers, policies and, for a
    delegated grant, the RFC 8693 `act` chain (the current actor outermost)."""
    access_request = grant.access_request
    ancestors = grant_ancestors(grant) if grant.parent_id else [grant]
    root = ancestors[-1]
    claims = {
        "sub": root.agent.spiffe_id,
        "aud": grant.privilege.resource,
        "scope": grant.scope,
        "task_id": grant.task_id,
        "grant_id": grant.pk,
        "authorization_details": [
            {
                "type": "custody_grant",
                "privilege": grant.scope,
                "request_id": access_request.pk,
                "grant_expires_at": int(grant.expires_at.timestamp()),
                "approvers": grant_approvers(grant),
                "policies": access_request.policy_ids,
            }
        ],
    }
    if grant.parent_id:
        # RFC 8693 §4.1: the current actor outermost, earlier actors nested inside.
        act = None
        for link in reversed(ancestors[:-1]):
            act = {"sub": link.agent.spiffe_id, **({"act": act} if act else {})}
        claims["act"] = act
    return claims


def signing_key_check() -> None:
    """Raise unless the current signing key decrypts and loads (readiness; never creates one)."""
    key = SigningKey.objects.filter(state=SigningKey.State.CURRENT).first()
    if key is None:
        return  # none yet: the first token creates it
    try:
        pem = _fernet().decrypt(key.encrypted_private_key.encode())
    except InvalidToken as exc:
        raise RuntimeError("the current signing key cannot be decrypted (SECRET_KEY?)") from exc
    serialization.load_pem_private_key(pem, password=None)
