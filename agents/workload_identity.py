"""Verifying an agent's workload identity: a JWT-SVID or an OIDC token from a registered domain.

Each failure raises `IdentityRejected` with a stable reason code; the caller turns it into a 401.
Tokens never reach logs or the audit log: only their `jti` and a short SHA-256 fingerprint do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import jwt
from django.conf import settings
from django.core.exceptions import ValidationError

from agents.jwks import JwksUnavailable, find_key
from agents.models import Agent, TrustDomain
from agents.spiffe import parse_spiffe_id

ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
# Custody's own access tokens carry typ "at+jwt" (RFC 9068); a login token must not.
LOGIN_TOKEN_TYPES = frozenset({"JWT", "JOSE"})
MAX_TOKEN_BYTES = 8192


class IdentityRejected(Exception):
    def __init__(self, reason: str, message: str, *, claims: dict | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.claims = claims or {}


@dataclass(frozen=True)
class VerifiedIdentity:
    agent: Agent
    trust_domain: TrustDomain
    claims: dict


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _trust_domain_for(iss: str | None, sub: str | None) -> TrustDomain:
    if iss:
        oidc = TrustDomain.objects.filter(
            kind=TrustDomain.Kind.OIDC, issuer=iss, enabled=True
        ).first()
        if oidc is not None:
            return oidc
    if not isinstance(sub, str) or not sub.startswith("spiffe://"):
        raise IdentityRejected("unknown_issuer", "The token's issuer is not a registered domain.")
    try:
        spiffe_id = parse_spiffe_id(sub)
    except ValidationError as exc:
        raise IdentityRejected("malformed_token", f"The sub is not a SPIFFE ID: {exc.messages[0]}")
    domain = TrustDomain.objects.filter(
        kind=TrustDomain.Kind.SPIFFE, name=spiffe_id.trust_domain, enabled=True
    ).first()
    if domain is None:
        raise IdentityRejected(
            "unknown_issuer", f"Trust domain {spiffe_id.trust_domain!r} is not registered."
        )
    if domain.issuer and iss != domain.issuer:
        raise IdentityRejected("unknown_issuer", "The token's issuer does not match its domain.")
    return domain


def verify_workload_token(token: str) -> VerifiedIdentity:
    if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise IdentityRejected("malformed_token", "The bearer token is not a compact JWT.")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise IdentityRejected("malformed_token", "The bearer token is not a readable JWT.")
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise IdentityRejected(
            "unsupported_algorithm",
            f"Algorithm {alg!r} is not accepted; use RS256, ES256 or EdDSA.",
        )
    typ = header.get("typ")
    iss, sub = unverified.get("iss"), unverified.get("sub")
    if (typ is not None and str(typ).upper() not in LOGIN_TOKEN_TYPES) or (
        iss == settings.CUSTODY_ISSUER
    ):
        raise IdentityRejected(
            "wrong_token_type", "This is not a workload identity token (a Custody access token?)."
        )
    domain = _trust_domain_for(iss if isinstance(iss, str) else None, sub)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise IdentityRejected("unknown_key", "The token names no key id (kid).")
    try:
        jwk = find_key(domain, kid)
    except JwksUnavailable:
        raise IdentityRejected("jwks_unavailable", "The domain's keys cannot be fetched right now.")
    if jwk is None:
        raise IdentityRejected("unknown_key", "The token's key id is not in the domain's JWKS.")
    if jwk.get("alg") not in (None, alg):
        raise IdentityRejected("bad_signature", "The key is registered for another algorithm.")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=domain.expected_audience,
            issuer=domain.issuer or None,
            leeway=settings.CUSTODY_JWT_LEEWAY_SECONDS,
            options={"require": ["exp", "sub", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise IdentityRejected("token_expired", "The token has expired.", claims=unverified)
    except jwt.ImmatureSignatureError:
        raise IdentityRejected("token_not_yet_valid", "The token is not valid yet.")
    except jwt.InvalidAudienceError:
        raise IdentityRejected(
            "wrong_audience", f"The token's audience must include {domain.expected_audience!r}."
        )
    except jwt.MissingRequiredClaimError as exc:
        raise IdentityRejected("missing_claim", f"The token has no {exc.claim!r} claim.")
    except jwt.InvalidIssuerError:
        raise IdentityRejected("unknown_issuer", "The token's issuer does not match its domain.")
    except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.PyJWKError):
        raise IdentityRejected("bad_signature", "The token's signature does not verify.")
    except jwt.PyJWTError as exc:
        raise IdentityRejected("malformed_token", f"The token is not valid: {exc}.")

    if domain.kind == TrustDomain.Kind.OIDC:
        agent = (
            Agent.objects.select_related("sponsor", "team")
            .filter(oidc_trust_domain=domain, oidc_subject=claims["sub"])
            .first()
        )
    else:
        agent = (
            Agent.objects.select_related("sponsor", "team").filter(spiffe_id=claims["sub"]).first()
        )
    if agent is None:
        raise IdentityRejected(
            "unknown_agent", "No agent is registered for this identity.", claims=claims
        )
    if agent.status == Agent.Status.SUSPENDED:
        raise IdentityRejected("agent_suspended", "This agent is suspended.", claims=claims)
    if agent.status == Agent.Status.RETIRED:
        raise IdentityRejected("agent_retired", "This agent is retired.", claims=claims)
    return VerifiedIdentity(agent=agent, trust_domain=domain, claims=claims)
