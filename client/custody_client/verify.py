"""Verify Custody access tokens on a resource server, locally.

    verifier = Verifier(issuer="https://custody.example", audience="payments-db")
    token = verifier.verify(bearer)          # raises TokenRejected (fail closed)
    token.require_scope("payments-db:write")

The JWKS is fetched from `<issuer>/.well-known/jwks.json` (or `jwks_url`), cached, and fetched
again when a token names a key it does not know (Custody rotated its key). `iss`, `aud`, `exp`,
`nbf`, the `at+jwt` type and the algorithm are checked; `act` (RFC 8693) is exposed as the chain
of actors. Revocation: a `RevocationList` fed by Custody's Security Event Tokens (see
`custody_client.events`: a push receiver and a poll loop) refuses a revoked grant's tokens at
once, before their `exp`. Introspection (RFC 7662, with the resource server's own credentials)
is the fallback when the keys cannot be fetched, or on demand with `verify(..., online=True)`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

ACCESS_TOKEN_TYPE = "at+jwt"
SET_TYPE = "secevent+jwt"
ALGORITHMS = ("ES256", "EdDSA", "RS256", "PS256")
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
ACCOUNT_DISABLED = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"


class TokenRejected(Exception):
    """The token is not to be honoured; `reason` is short and safe to log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TokenRevoked(TokenRejected):
    pass


class InsufficientScope(TokenRejected):
    pass


class JwksUnavailable(Exception):
    pass


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed every check. `actors` is the delegation chain from the `act` claim,
    the current actor first; `acting_agent` is who presents it."""

    claims: dict[str, Any]
    online: bool = False

    @property
    def subject(self) -> str:
        return self.claims["sub"]

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(str(self.claims.get("scope") or "").split())

    @property
    def task_id(self) -> str | None:
        return self.claims.get("task_id")

    @property
    def grant_id(self) -> int | None:
        return self.claims.get("grant_id")

    @property
    def jti(self) -> str:
        return self.claims["jti"]

    @property
    def expires_at(self) -> int:
        return int(self.claims["exp"])

    @property
    def actors(self) -> list[str]:
        chain, act = [], self.claims.get("act")
        while isinstance(act, dict) and isinstance(act.get("sub"), str):
            chain.append(act["sub"])
            act = act.get("act")
        return chain

    @property
    def acting_agent(self) -> str:
        return (self.actors or [self.subject])[0]

    @property
    def agents(self) -> list[str]:
        """Every agent this token speaks for: the actors and the subject."""
        return [*self.actors, self.subject]

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def require_scope(self, scope: str) -> VerifiedToken:
        if not self.has_scope(scope):
            raise InsufficientScope(f"the token's scope does not include {scope}")
        return self

    def require_task(self, task_id: str) -> VerifiedToken:
        if self.task_id != task_id:
            raise InsufficientScope(f"the token is bound to another task than {task_id}")
        return self


@dataclass
class RevocationList:
    """Grants Custody said ended, and agents it said were disabled (with when): thread-safe.

    An ended grant is remembered `retain_seconds` (longer than any token's lifetime); a disabled
    agent's tokens issued up to the event stay refused for as long."""

    retain_seconds: int = 3600
    _grants: dict[int, float] = field(default_factory=dict)
    _agents: dict[str, tuple[int, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition | None = None

    def __post_init__(self):
        self._changed = threading.Condition(self._lock)

    def revoke_grant(self, grant_id: int) -> None:
        with self._lock:
            self._grants[int(grant_id)] = time.monotonic() + self.retain_seconds
            self._changed.notify_all()

    def disable_agent(self, spiffe_id: str, *, at: int) -> None:
        with self._lock:
            previous = self._agents.get(spiffe_id, (0, 0.0))[0]
            self._agents[spiffe_id] = (max(at, previous), time.monotonic() + self.retain_seconds)
            self._changed.notify_all()

    def grant_revoked(self, grant_id) -> bool:
        with self._lock:
            return grant_id in self._grants

    def why_refused(self, token: VerifiedToken) -> str | None:
        now = time.monotonic()
        with self._lock:
            if len(self._grants) > 10000:  # forget grants whose tokens have all expired
                self._grants = {k: v for k, v in self._grants.items() if v > now}
            if token.grant_id is not None and token.grant_id in self._grants:
                return "the grant was revoked"
            issued = int(token.claims.get("iat", 0))
            for agent in token.agents:
                disabled = self._agents.get(agent)
                if disabled is not None and issued <= disabled[0]:
                    return "the agent was disabled"
        return None

    def wait_for_grant(self, grant_id: int, timeout: float) -> bool:
        """Block until `grant_id` is known revoked (tests and benchmarks)."""
        with self._lock:
            return self._changed.wait_for(lambda: grant_id in self._grants, timeout=timeout)


class JwksCache:
    """Custody's public keys, cached; an unknown `kid` fetches them again (key rotation), at
    most every `min_refresh_seconds`."""

    def __init__(
        self,
        url: str,
        *,
        http: httpx.Client,
        cache_seconds: float = 300,
        min_refresh_seconds: float = 5,
    ):
        self.url = url
        self.http = http
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def _fetch(self) -> None:
        try:
            response = self.http.get(self.url, timeout=5)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise JwksUnavailable(f"cannot fetch {self.url}: {exc}") from exc
        keys = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("kid"), str):
                try:
                    keys[entry["kid"]] = jwt.PyJWK(entry)
                except jwt.PyJWTError:
                    continue  # a key type this PyJWT cannot load is no key for us
        self._keys = keys
        self._fetched_at = time.monotonic()

    def key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            age = time.monotonic() - self._fetched_at
            stale = age > self.cache_seconds
            if stale or (kid not in self._keys and age > self.min_refresh_seconds):
                try:
                    self._fetch()
                except JwksUnavailable:
                    if not self._keys or kid not in self._keys:
                        raise
                    # Keys we already hold still verify while Custody is out of reach.
            if kid not in self._keys:
                raise TokenRejected("signed by a key Custody does not publish")
            return self._keys[kid]


class Verifier:
    """Checks Custody access tokens for one resource server (`audience`, e.g. `payments-db`).

    `credentials` returns the resource server's own bearer (its JWT-SVID) for introspection and
    polling; `set_audience` is the `aud` Custody puts on this server's Security Event Tokens
    (its SPIFFE ID)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        base_url: str | None = None,
        jwks_url: str | None = None,
        credentials: Callable[[], str] | None = None,
        set_audience: str | None = None,
        revocations: RevocationList | None = None,
        leeway: float = 0,
        jwks_cache_seconds: float = 300,
        introspect_when_offline: bool = True,
        http: httpx.Client | None = None,
    ):
        self.issuer = issuer
        self.audience = audience
        self.base_url = (base_url or issuer).rstrip("/")
        self.http = http or httpx.Client()
        self.jwks = JwksCache(
            jwks_url or f"{self.base_url}/.well-known/jwks.json",
            http=self.http,
            cache_seconds=jwks_cache_seconds,
        )
        self.credentials = credentials
        self.set_audience = set_audience
        self.revocations = revocations or RevocationList()
        self.leeway = leeway
        self.introspect_when_offline = introspect_when_offline

    # --- access tokens -------------------------------------------------------------------
    def verify(self, token: str, *, online: bool = False) -> VerifiedToken:
        """The token's claims if Custody's token is good for this server now; TokenRejected
        (TokenRevoked for a revoked grant or disabled agent) otherwise."""
        if not isinstance(token, str) or not token:
            raise TokenRejected("no token")
        if online:
            return self.introspect(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("not a JWT")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise TokenRejected("not a Custody access token")
        if header.get("alg") not in ALGORITHMS or not isinstance(header.get("kid"), str):
            raise TokenRejected("unexpected algorithm or no key id")
        try:
            key = self.jwks.key(header["kid"])
        except JwksUnavailable:
            if self.introspect_when_offline and self.credentials is not None:
                return self.introspect(token)
            raise TokenRejected("Custody's keys are out of reach")
        if key.algorithm_name != header["alg"]:
            raise TokenRejected("the algorithm does not match the key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[header["alg"]],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "jti", "sub", "aud", "grant_id"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(str(exc))
        verified = VerifiedToken(claims=claims)
        why = self.revocations.why_refused(verified)
        if why:
            raise TokenRevoked(why)
        return verified

    def introspect(self, token: str) -> VerifiedToken:
        """RFC 7662 at Custody, as this resource server: grant, agent and policy checked now."""
        if self.credentials is None:
            raise TokenRejected("introspection needs the resource server's credentials")
        try:
            response = self.http.post(
                f"{self.base_url}/api/v1/introspect",
                json={"token": token},
                headers={"Authorization": f"Bearer {self.credentials()}"},
                timeout=5,
            )
            response.raise_for_status()
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TokenRejected(f"introspection failed: {exc}")
        if not isinstance(answer, dict) or answer.get("active") is not True:
            raise TokenRejected("Custody says the token is not active")
        aud = answer.get("aud")
        if self.audience not in (aud if isinstance(aud, list) else [aud]):
            raise TokenRejected("the token is for another audience")
        verified = VerifiedToken(claims=answer, online=True)
        why = self.revocations.why_refused(verified)
        if why:
            raise TokenRevoked(why)
        return verified

    # --- security events -------------------------------------------------------------------
    def accept_security_event(self, set_token: str) -> dict:
        """Verify one Security Event Token from Custody and apply it; returns its claims.
        Raises InvalidSecurityEvent (with an RFC 8935 error code) if it is not good."""
        from custody_client.events import InvalidSecurityEvent, SecurityEventNotVerifiedYet

        try:
            header = jwt.get_unverified_header(set_token)
        except jwt.PyJWTError:
            raise InvalidSecurityEvent("invalid_request", "not a JWT")
        if header.get("typ") != SET_TYPE:
            raise InvalidSecurityEvent("invalid_request", "not a Security Event Token")
        if header.get("alg") not in ALGORITHMS or not isinstance(header.get("kid"), str):
            raise InvalidSecurityEvent("invalid_key", "unexpected algorithm or no key id")
        try:
            key = self.jwks.key(header["kid"])
        except TokenRejected as exc:
            raise InvalidSecurityEvent("invalid_key", exc.reason)
        except JwksUnavailable as exc:
            # Not known bad: only not checkable now. The transmitter must try again later.
            raise SecurityEventNotVerifiedYet(str(exc))
        if key.algorithm_name != header["alg"]:
            raise InvalidSecurityEvent("invalid_key", "the algorithm does not match the key")
        try:
            claims = jwt.decode(
                set_token,
                key.key,
                algorithms=[header["alg"]],
                issuer=self.issuer,
                audience=self.set_audience,
                options={
                    "require": ["iat", "jti", "iss"],
                    "verify_aud": self.set_audience is not None,
                },
            )
        except jwt.InvalidIssuerError as exc:
            raise InvalidSecurityEvent("invalid_issuer", str(exc))
        except jwt.InvalidAudienceError as exc:
            raise InvalidSecurityEvent("invalid_audience", str(exc))
        except jwt.PyJWTError as exc:
            raise InvalidSecurityEvent("invalid_request", str(exc))
        events = claims.get("events")
        if not isinstance(events, dict) or not events:
            raise InvalidSecurityEvent("invalid_request", "no events")
        self.apply_security_event(claims)
        return claims

    def apply_security_event(self, claims: dict) -> None:
        events = claims["events"]
        sub_id = claims.get("sub_id") or {}
        if SESSION_REVOKED in events:
            event = events[SESSION_REVOKED] or {}
            grant_id = (event.get("custody") or {}).get("grant_id")
            if grant_id is None:
                session = sub_id.get("session") or {}
                grant_id = session.get("id")
            if grant_id is not None:
                self.revocations.revoke_grant(int(grant_id))
        if ACCOUNT_DISABLED in events:
            event = events[ACCOUNT_DISABLED] or {}
            uri = sub_id.get("uri") or (event.get("custody") or {}).get("agent")
            if isinstance(uri, str):
                self.revocations.disable_agent(
                    uri, at=int(event.get("event_timestamp") or claims["iat"])
                )
