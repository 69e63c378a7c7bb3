"""Verifying an agent's workload identity: a JWT-SVID or an OIDC token from a registered domain.

Each failure raises `IdentityRejected` with a stable reason code; the caller turns it into a 401.
Tokens never reach logs or the audit log: only their `jti` and a short SHA-256 fingerprint do.

Two kinds of workload token, never one in the other's place (DESIGN invariant 10):
- a login names the domain's audience (CUSTODY_AUDIENCE unless the domain sets its own) and lives
  at most CUSTODY_LOGIN_TOKEN_MAX_SECONDS; like any bearer SVID it is reused for many calls within
  its short life, so its `jti` is not replay-checked;
- a delegation actor token names CUSTODY_DELEGATION_AUDIENCE, lives at most
  CUSTODY_DELEGATION_TOKEN_MAX_SECONDS and is accepted once: its `jti` is spent in the database.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agents.jwks import JwksUnavailable, find_key
from agents.models import Agent, SpentActorToken, TrustDomain
from agents.spiffe import parse_spiffe_id
from core import prepared
from core.jwt_memo import VerifiedTokens
from core.raw_rows import columns, model_from_row

# ES384 is what SPIRE issues with P-384 keys; PyJWT checks that the key's curve fits the alg.
ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256", "ES384", "EdDSA"})
# Custody's own access tokens carry typ "at+jwt" (RFC 9068); a login token must not.
LOGIN_TOKEN_TYPES = frozenset({"JWT", "JOSE"})
MAX_TOKEN_BYTES = 8192
# Login SVIDs verified in this process, remembered under the key and every check asked for
# (core/jwt_memo.py): an agent presents the same SVID on every call of its short life. Actor
# tokens are never remembered (each is spent once).
_verified_logins = VerifiedTokens()


class IdentityRejected(Exception):
    """`agent` is set only once the token's signature verified: then the agent it names is
    known (a suspended agent, a wrong audience, an expired token), and the evidence says so."""

    def __init__(
        self, reason: str, message: str, *, claims: dict | None = None, agent: Agent | None = None
    ):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.claims = claims or {}
        self.agent = agent


def _agent_for(domain: TrustDomain, sub) -> Agent | None:
    """The agent a (signature-verified) token's `sub` names in its domain, or None."""
    if not isinstance(sub, str):
        return None
    read_with_domain = getattr(domain, "_custody_agent_for", None)
    if read_with_domain is not None and read_with_domain[0] == sub:
        return read_with_domain[1]  # read in the domain's own statement (_spiffe_domain)
    # The newest incarnation: a retired identity registered again is a new agent (one live).
    agents = Agent.objects.select_related("sponsor", "team").order_by("-pk")
    if domain.kind == TrustDomain.Kind.OIDC:
        return agents.filter(oidc_trust_domain=domain, oidc_subject=sub).first()
    return agents.filter(spiffe_id=sub).first()


def _spiffe_domain(name: str, sub: str) -> TrustDomain | None:
    """The enabled SPIFFE domain, and (read in the same statement, remembered on it for
    `_agent_for`, used only once the signature verified) the newest agent `sub` names, with its
    sponsor's username and its team's name: every agent call authenticates, so one statement,
    not two."""
    from django.contrib.auth.models import Group

    user_model = Agent._meta.get_field("sponsor").related_model
    agents = Agent._meta.db_table
    sql = (
        f"SELECT {columns(TrustDomain, 'd')}, {columns(Agent, 'a')}, "  # noqa: S608
        f'u."{user_model.USERNAME_FIELD}", t."name" '
        f'FROM "{TrustDomain._meta.db_table}" d '
        f'LEFT JOIN "{agents}" a ON a."id" = '
        f'(SELECT max(x."id") FROM "{agents}" x WHERE x."spiffe_id" = %s) '
        f'LEFT JOIN "{user_model._meta.db_table}" u ON u."id" = a."sponsor_id" '
        f'LEFT JOIN "{Group._meta.db_table}" t ON t."id" = a."team_id" '
        'WHERE d."kind" = %s AND d."name" = %s AND d."enabled" ORDER BY d."id" LIMIT 1'
    )
    with connection.cursor() as cursor:
        prepared.execute(cursor, sql, [sub, TrustDomain.Kind.SPIFFE.value, name])
        row = cursor.fetchone()
    if row is None:
        return None
    width = len(TrustDomain._meta.concrete_fields)
    domain = model_from_row(TrustDomain, row[:width])
    agent_values = row[width : width + len(Agent._meta.concrete_fields)]
    username, team_name = row[width + len(agent_values) :]
    agent = None
    if agent_values[0] is not None:
        agent = model_from_row(Agent, agent_values)
        if agent.sponsor_id is not None:
            agent.sponsor = user_model.from_db(
                connection.alias, ["id", user_model.USERNAME_FIELD], [agent.sponsor_id, username]
            )
        if agent.team_id is not None:
            agent.team = Group.from_db(connection.alias, ["id", "name"], [agent.team_id, team_name])
    domain._custody_agent_for = (sub, agent)
    return domain


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
    domain = _spiffe_domain(spiffe_id.trust_domain, sub)
    if domain is None:
        raise IdentityRejected(
            "unknown_issuer", f"Trust domain {spiffe_id.trust_domain!r} is not registered."
        )
    if domain.issuer and iss != domain.issuer:
        raise IdentityRejected("unknown_issuer", "The token's issuer does not match its domain.")
    return domain


def _audiences(claims: dict) -> list:
    audience = claims.get("aud")
    return audience if isinstance(audience, list) else [audience]


def verify_workload_token(token: str) -> VerifiedIdentity:
    """An agent's login: a workload token for the domain's audience, never an actor token."""
    return _verify(token, delegation=False)


def verify_delegation_actor_token(token: str) -> VerifiedIdentity:
    """A sub-agent's consent to one delegation: verified, then spent (a second use is refused)."""
    identity = _verify(token, delegation=True)
    _spend(identity)
    return identity


def _spend(identity: VerifiedIdentity) -> None:
    claims = identity.claims
    # Remembered as long as the token could still verify (its expiry plus the clock leeway).
    expires_at = datetime.fromtimestamp(
        float(claims["exp"]) + settings.CUSTODY_JWT_LEEWAY_SECONDS, tz=UTC
    )
    SpentActorToken.objects.filter(expires_at__lt=timezone.now()).delete()
    try:
        with transaction.atomic():
            SpentActorToken.objects.create(
                trust_domain=identity.trust_domain, jti=claims["jti"], expires_at=expires_at
            )
    except IntegrityError:
        raise IdentityRejected(
            "token_replayed",
            "This actor token was already used; an actor token is accepted once (mint a new one).",
            claims=claims,
            agent=identity.agent,
        )


def _verify(token: str, *, delegation: bool) -> VerifiedIdentity:
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
            f"Algorithm {alg!r} is not accepted; use RS256, ES256, ES384 or EdDSA.",
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
    login_audience = domain.expected_audience
    delegation_audience = settings.CUSTODY_DELEGATION_AUDIENCE
    audience, other_audience = (
        (delegation_audience, login_audience)
        if delegation
        else (login_audience, delegation_audience)
    )
    required = ["exp", "iat", "sub", "aud", *(["jti"] if delegation else [])]
    leeway = settings.CUSTODY_JWT_LEEWAY_SECONDS
    # Everything the verification below depends on, the key's own JWK included.
    inputs = (json.dumps(jwk, sort_keys=True), alg, audience, domain.issuer, leeway)
    remembered = None if delegation else _verified_logins.get(token, inputs, leeway=leeway)
    try:
        if remembered is not None:
            claims = remembered
        else:
            key = jwt.PyJWK(jwk, algorithm=alg).key
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=domain.issuer or None,
                leeway=leeway,
                options={"require": required},
            )
            if not delegation:
                _verified_logins.put(token, inputs, claims)
    except jwt.ExpiredSignatureError:  # raised after the signature verified
        raise IdentityRejected(
            "token_expired",
            "The token has expired.",
            claims=unverified,
            agent=_agent_for(domain, unverified.get("sub")),
        )
    except jwt.ImmatureSignatureError:
        raise IdentityRejected("token_not_yet_valid", "The token is not valid yet.")
    except jwt.InvalidAudienceError:
        if delegation:
            message = (
                f"An actor token must name the delegation audience {delegation_audience!r} "
                "(mint one for delegation); a login SVID is never accepted as an actor token."
            )
        elif delegation_audience in _audiences(unverified):
            message = (
                f"This is a delegation actor token; it cannot log in (a login names "
                f"{login_audience!r})."
            )
        else:
            message = f"The token's audience must include {login_audience!r}."
        raise IdentityRejected(  # raised after the signature verified
            "wrong_audience",
            message,
            claims=unverified,
            agent=_agent_for(domain, unverified.get("sub")),
        )
    except jwt.MissingRequiredClaimError as exc:
        raise IdentityRejected("missing_claim", f"The token has no {exc.claim!r} claim.")
    except jwt.InvalidIssuerError:
        raise IdentityRejected("unknown_issuer", "The token's issuer does not match its domain.")
    except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.PyJWKError):
        raise IdentityRejected("bad_signature", "The token's signature does not verify.")
    except jwt.PyJWTError as exc:
        raise IdentityRejected("malformed_token", f"The token is not valid: {exc}.")
    except (OverflowError, ValueError, TypeError):  # a time claim no clock can hold
        raise IdentityRejected("malformed_token", "The token's time claims are not numbers.")

    # The signature verified: the agent `sub` names is known from here on, even when refused.
    agent = _agent_for(domain, claims["sub"])
    if other_audience in _audiences(claims):
        # One token naming both audiences would be a login and an actor token at once.
        raise IdentityRejected(
            "wrong_audience",
            f"The token names both {login_audience!r} and {delegation_audience!r}; a login and "
            "a delegation actor token are never the same token.",
            claims=claims,
            agent=agent,
        )
    try:
        lifetime = float(claims["exp"]) - float(claims["iat"])
    except (OverflowError, ValueError, TypeError):
        lifetime = math.nan
    if not math.isfinite(lifetime):
        raise IdentityRejected(
            "malformed_token", "The token's time claims are not numbers.", agent=agent
        )
    maximum = (
        settings.CUSTODY_DELEGATION_TOKEN_MAX_SECONDS
        if delegation
        else settings.CUSTODY_LOGIN_TOKEN_MAX_SECONDS
    )
    if lifetime > maximum:
        kind = "an actor token" if delegation else "a login token"
        raise IdentityRejected(
            "token_lifetime_too_long",
            f"The token lives {int(lifetime)} s (exp - iat); Custody accepts at most {maximum} s "
            f"for {kind}.",
            claims=claims,
            agent=agent,
        )
    if delegation and not (isinstance(claims["jti"], str) and 0 < len(claims["jti"]) <= 255):
        raise IdentityRejected(
            "malformed_token", "An actor token's jti is a string of 1-255 characters.", agent=agent
        )
    if agent is None:
        raise IdentityRejected(
            "unknown_agent", "No agent is registered for this identity.", claims=claims
        )
    if agent.status == Agent.Status.SUSPENDED:
        raise IdentityRejected(
            "agent_suspended", "This agent is suspended.", claims=claims, agent=agent
        )
    if agent.status == Agent.Status.RETIRED:
        raise IdentityRejected(
            "agent_retired", "This agent is retired.", claims=claims, agent=agent
        )
    return VerifiedIdentity(agent=agent, trust_domain=domain, claims=claims)
