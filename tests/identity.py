"""Test-side workload identity: a trust domain whose keys the tests hold, and a token minter."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from agents.jwks import jwk_thumbprint


def _public_jwk(private_key, alg: str) -> dict:
    if alg in ("ES256", "ES384"):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    elif alg == "RS256":
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": alg, "use": "sig"}


def new_private_key(alg: str = "ES256"):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":  # what SPIRE issues with P-384 keys
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ed25519.Ed25519PrivateKey.generate()


@dataclass
class SigningIdentity:
    """Holds a private key; `jwks` is what the trust domain publishes."""

    alg: str = "ES256"
    private_key: object = None
    jwk: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.private_key is None:
            self.private_key = new_private_key(self.alg)
        self.jwk = _public_jwk(self.private_key, self.alg)

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    @property
    def jwks(self) -> dict:
        return {"keys": [self.jwk]}

    def mint(
        self, sub: str, *, audience="custody", ttl: int = 300, headers: dict | None = None, **claims
    ) -> str:
        now = int(time.time())
        payload = {
            "sub": sub,
            "aud": [audience] if isinstance(audience, str) else audience,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(
            payload,
            self.private_key,
            algorithm=self.alg,
            headers={"kid": self.kid, "typ": "JWT", **(headers or {})},
        )

    def act(self, sub: str, *, ttl: int = 60, **claims) -> str:
        """An RFC 8693 `actor_token` for one delegation: the delegation audience, short-lived."""
        from django.conf import settings

        return self.mint(sub, audience=settings.CUSTODY_DELEGATION_AUDIENCE, ttl=ttl, **claims)
