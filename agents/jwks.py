"""JWKS documents of registered trust domains: inline, or fetched from the domain's URL and cached.

`kid` values from tokens are only ever used as dictionary keys here: no file, query or outbound
request is driven by anything a token says (`jku` and `x5u` headers are ignored). The URL is
https (outside DEBUG), its certificate checked against the system's or CUSTODY_JWKS_CA_FILE's
CAs, and a redirect is a failure, never followed: the keys come from the registered URL only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import ssl
import urllib.error
import urllib.request

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.locmem import LocMemCache

from agents.models import TrustDomain, jwks_url_refusal
from core.metrics import JWKS_FETCH_FAILURES

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


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is answered as an error (HTTPError), not followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener() -> urllib.request.OpenerDirector:
    context = ssl.create_default_context(cafile=settings.CUSTODY_JWKS_CA_FILE or None)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirects())


def _download(url: str) -> dict:
    if not url.startswith(("https://", "http://")):
        raise JwksUnavailable("A JWKS URL must be http(s)")  # never file: or other schemes
    if refusal := jwks_url_refusal(url):
        raise JwksUnavailable(f"JWKS fetch from {url} refused: {refusal}")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with _opener().open(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            body = response.read(MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise JwksUnavailable(
                f"JWKS fetch from {url} was redirected (HTTP {exc.code} to "
                f"{exc.headers.get('Location')!r}); redirects are not followed"
            ) from exc
        raise JwksUnavailable(f"JWKS fetch from {url} failed: {exc}") from exc
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


def _fetch_for(domain: TrustDomain) -> dict:
    """The domain's JWKS from its URL; a failure is counted and logged for whoever is on call."""
    try:
        return _download(domain.jwks_url)
    except JwksUnavailable as exc:
        JWKS_FETCH_FAILURES.labels(trust_domain=domain.name).inc()
        # Agents of this domain cannot log in until it answers: operators must hear of it.
        logger.warning(
            "JWKS fetch failed for trust domain %s: %s",
            domain.name,
            exc,
            extra={"event": "jwks.fetch_failed", "trust_domain": domain.name},
        )
        raise


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


def find_key(domain: TrustDomain, kid: str) -> dict | None:
    """The JWK with this `kid` in the domain's JWKS, or None."""
    if domain.jwks:
        return _keys_by_kid(domain.jwks).get(kid)
    if not domain.jwks_url:
        return None
    key = _cache_key(domain)
    document = _cached("get", key)
    if document is None:
        document = _fetch_for(domain)
        _cached("set", key, document, settings.CUSTODY_JWKS_CACHE_SECONDS)
    found = _keys_by_kid(document).get(kid)
    if found is None and _cached("add", f"{key}:refetch", 1, REFETCH_INTERVAL_SECONDS):
        document = _fetch_for(domain)
        _cached("set", key, document, settings.CUSTODY_JWKS_CACHE_SECONDS)
        found = _keys_by_kid(document).get(kid)
    return found
