"""JWKS documents of registered trust domains: inline, or fetched from the domain's URL and cached.

`kid` values from tokens are only ever used as dictionary keys here: no file, query or outbound
request is driven by anything a token says (`jku` and `x5u` headers are ignored).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import urllib.request

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.locmem import LocMemCache

from agents.models import TrustDomain

logger = logging.getLogger(__name__)
# The shared cache (Redis) is an optimisation: while it is down, each process keeps fetched
# documents itself, so agents still authenticate and the JWKS endpoints are not hit per request.
_process_cache = LocMemCache("custody-jwks", {"OPTIONS": {"MAX_ENTRIES": 1000}})

MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT_SECONDS = 5
# A token naming an unknown kid may trigger one refetch (key rotation) per domain per interval.
REFETCH_INTERVAL_SECONDS = 30


class JwksUnavailable(Exception):
    pass


def _cache_key(domain: TrustDomain) -> str:
    digest = hashlib.sha256(domain.jwks_url.encode()).hexdigest()[:16]
    return f"custody:jwks:{domain.pk}:{digest}"


def _fetch(url: str) -> dict:
    if not url.startswith(("https://", "http://")):
        raise JwksUnavailable("A JWKS URL must be http(s)")  # never file: or other schemes
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310
            body = response.read(MAX_JWKS_BYTES + 1)
    except OSError as exc:
        raise JwksUnavailable(f"JWKS fetch from {url} failed: {exc}") from exc
    if len(body) > MAX_JWKS_BYTES:
        raise JwksUnavailable(f"JWKS at {url} is larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise JwksUnavailable(f"JWKS at {url} is not JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksUnavailable(f'JWKS at {url} has no "keys" list')
    return document


# RFC 7638: the members that define each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


def jwk_thumbprint(jwk: dict) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, used as its `kid`."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def _keys_by_kid(document: dict | None) -> dict[str, dict]:
    keys = {}
    for jwk in (document or {}).get("keys", []):
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
            keys[jwk["kid"]] = jwk
    return keys


def _cached(operation: str, *args):
    """`cache.<operation>(*args)`, or this process's own cache while the shared one fails."""
    try:
        return getattr(cache, operation)(*args)
    except Exception as exc:  # noqa: BLE001 - any cache backend, any failure: fall back
        logger.warning("JWKS cache: the shared cache failed (%r); using this process's", exc)
        return getattr(_process_cache, operation)(*args)


def _fetch_logged(domain: TrustDomain) -> dict:
    try:
        return _fetch(domain.jwks_url)
    except JwksUnavailable as exc:
        # Agents of this domain cannot log in until it answers: operators must hear of it.
        logger.warning(
            "JWKS fetch failed for trust domain %s: %s",
            domain.name,
            exc,
            extra={"event": "jwks.fetch_failed", "trust_domain": domain.name},
        )
        raise


def find_key(domain: TrustDomain, kid: str) -> dict | None:
    """The JWK with this `kid` in the domain's JWKS, or None."""
    if domain.jwks:
        return _keys_by_kid(domain.jwks).get(kid)
    if not domain.jwks_url:
        return None
    key = _cache_key(domain)
    document = _cached("get", key)
    if document is None:
        document = _fetch_logged(domain)
        _cached("set", key, document, settings.CUSTODY_JWKS_CACHE_SECONDS)
    found = _keys_by_kid(document).get(kid)
    if found is None and _cached("add", f"{key}:refetch", 1, REFETCH_INTERVAL_SECONDS):
        document = _fetch_logged(domain)
        _cached("set", key, document, settings.CUSTODY_JWKS_CACHE_SECONDS)
        found = _keys_by_kid(document).get(kid)
    return found
