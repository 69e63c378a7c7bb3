"""The webhook broker: for systems that provision their own accounts. Custody POSTs a signed
request to the system's URL when a grant is issued (the answer is the credential) and again when
it ends; the system verifies the signature with Custody's JWKS and does the work.

Configuration (validated when an admin saves a privilege):
    {"url": "https://billing.internal/custody/credentials", "audience": "billing", "timeout": 10}

The request body is one compact JWS (`Content-Type: application/jwt`), signed with Custody's
current signing key (ES256, `kid` in the header, published at /.well-known/jwks.json) under its
own type `custody-broker+jwt`, so it is never taken for an access token or a Security Event
Token. Claims: `iss`, `aud` (the configured audience), `iat`, `exp` (a minute), `jti` (the
receiver may refuse a replay), `action` (`create`, `destroy` or `exists`), `credential` (the
name, stable across retries and the same in create and destroy), and when Custody knows them
`sub` (the agent's SPIFFE ID), `privilege`, `grant_id`, `task_id`, `expires_at` (epoch seconds,
create only: the receiver should make the account expire by itself then).

Answers: create — 200/201 with a JSON object of at most 16 KiB, handed to the agent once;
destroy — any 2xx, or 404/410 (already gone); exists — 200 yes, 404/410 no. A 5xx, 408, 429, a
timeout or a refused connection means "try again" (`BrokerUnavailable`); any other answer is a
`BrokerError` the outbox retries and alerts on. Redirects are not followed.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from approvals.tokens import jwt_sign_typed
from brokers.base import (
    Broker,
    BrokerConfigError,
    BrokerError,
    BrokerUnavailable,
    Holder,
    Issued,
    check_fields,
    register,
)

REQUEST_TYPE = "custody-broker+jwt"
REQUEST_LIFETIME_SECONDS = 60
MAX_ANSWER_BYTES = 16 * 1024
DEFAULT_TIMEOUT_SECONDS = 10
MAX_TIMEOUT_SECONDS = 60
_RETRYABLE = {408, 425, 429}


def _url_refusal(url: str) -> str | None:
    """Why Custody will not send credentials requests to `url`, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "url must be an https:// URL."
    if parts.scheme == "http" and not settings.CUSTODY_BROKER_WEBHOOK_ALLOW_HTTP:
        return (
            "url must start with https:// (plain http:// is accepted only when DEBUG or "
            "CUSTODY_BROKER_WEBHOOK_ALLOW_HTTP is on): the answer is a credential."
        )
    if parts.username or parts.password:
        return "url must not hold a user or password: the configuration is not a secret store."
    return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener() -> urllib.request.OpenerDirector:
    context = ssl.create_default_context(cafile=settings.CUSTODY_BROKER_WEBHOOK_CA_FILE or None)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirects())


def _excerpt(body: bytes) -> str:
    text = body[:200].decode(errors="replace").strip()
    return f": {text}" if text else ""


@register
class WebhookBroker(Broker):
    kind = "webhook"
    label = "HTTP webhook (the system provisions the account)"

    def validate_config(self, config: dict[str, Any]) -> dict[str, Any]:
        check_fields(config, ("url", "audience", "timeout"), label="webhook")
        url = config.get("url")
        if not isinstance(url, str) or not url:
            raise BrokerConfigError("url is required: where Custody sends its signed requests.")
        if refusal := _url_refusal(url):
            raise BrokerConfigError(refusal)
        audience = config.get("audience", url)
        if not isinstance(audience, str) or not audience or len(audience) > 255:
            raise BrokerConfigError("audience must be a non-empty string (the receiver's name).")
        timeout = config.get("timeout", DEFAULT_TIMEOUT_SECONDS)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_TIMEOUT_SECONDS
        ):
            raise BrokerConfigError(
                f"timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS}."
            )
        return {"url": url, "audience": audience, "timeout": timeout}

    def create(
        self,
        config: dict[str, Any],
        *,
        name: str,
        expires_at: datetime,
        holder: Holder | None = None,
    ) -> Issued:
        config = self.validate_config(config)
        status, body = _send(config, _claims(config, "create", name, holder, expires_at=expires_at))
        where = urlsplit(config["url"]).netloc
        if status not in (200, 201):
            _refuse(where, "create", status, body)
        # The answer is the credential: never quoted in an error, which an admin may read.
        if len(body) > MAX_ANSWER_BYTES:
            raise BrokerError(
                f"The webhook at {where} answered a credential larger than {MAX_ANSWER_BYTES} "
                "bytes; Custody refuses it."
            )
        try:
            secret = json.loads(body)
        except (ValueError, RecursionError):
            raise BrokerError(
                f"The webhook at {where} answered {status} with something that is not JSON; the "
                "credential must be a JSON object."
            ) from None
        if not isinstance(secret, dict) or not secret:
            raise BrokerError(
                f"The webhook at {where} answered {status} with JSON that is not a non-empty "
                "object; the credential must be a JSON object."
            )
        return Issued(secret=secret, details={"webhook": where, "audience": config["audience"]})

    def destroy(self, config: dict[str, Any], *, name: str, holder: Holder | None = None) -> None:
        config = self.validate_config(config)
        status, body = _send(config, _claims(config, "destroy", name, holder))
        if 200 <= status < 300 or status in (404, 410):
            return
        _refuse(urlsplit(config["url"]).netloc, "destroy", status, body)

    def exists(self, config: dict[str, Any], *, name: str, holder: Holder | None = None) -> bool:
        config = self.validate_config(config)
        status, body = _send(config, _claims(config, "exists", name, holder))
        if status == 200:
            return True
        if status in (404, 410):
            return False
        _refuse(urlsplit(config["url"]).netloc, "exists", status, body)
        return False  # not reached


def _claims(
    config: dict[str, Any],
    action: str,
    name: str,
    holder: Holder | None,
    *,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.CUSTODY_ISSUER,
        "aud": config["audience"],
        "iat": now,
        "exp": now + REQUEST_LIFETIME_SECONDS,
        "jti": uuid.uuid4().hex,
        "action": action,
        "credential": name,
    }
    if holder is not None:
        claims.update(
            sub=holder.agent,
            privilege=holder.privilege,
            grant_id=holder.grant_id,
            task_id=holder.task_id,
        )
    if expires_at is not None:
        claims["expires_at"] = int(expires_at.timestamp())
    return claims


def _send(config: dict[str, Any], claims: dict[str, Any]) -> tuple[int, bytes]:
    """POST the signed request; (status, at most MAX_ANSWER_BYTES + 1 bytes of the answer).
    A network failure or a timeout is BrokerUnavailable."""
    url = config["url"]
    if refusal := _url_refusal(url):  # saved under DEBUG, run without it
        raise BrokerConfigError(refusal)
    token = jwt_sign_typed(claims, typ=REQUEST_TYPE)
    http_request = urllib.request.Request(  # noqa: S310  (scheme checked: http(s) only)
        url,
        data=token.encode(),
        headers={"Content-Type": "application/jwt", "Accept": "application/json"},
        method="POST",
    )
    where = urlsplit(url).netloc
    try:
        with _opener().open(http_request, timeout=config["timeout"]) as response:
            return response.status, response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(MAX_ANSWER_BYTES + 1)
        except OSError:
            body = b""
        return exc.code, body
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLCertVerificationError):  # not an outage: a setting
            raise BrokerError(
                f"The webhook at {where} presented a certificate Custody does not trust "
                f"({reason.verify_message}); for an internal CA set "
                "CUSTODY_BROKER_WEBHOOK_CA_FILE."
            ) from None
        raise BrokerUnavailable(f"The webhook at {where} cannot be reached: {reason}") from None


def _refuse(where: str, action: str, status: int, body: bytes) -> None:
    if status >= 500 or status in _RETRYABLE:
        raise BrokerUnavailable(
            f"The webhook at {where} answered {status} to {action}; Custody will try again."
        )
    if 300 <= status < 400:
        raise BrokerError(
            f"The webhook at {where} answered {status} (a redirect) to {action}; redirects are "
            "not followed: configure the final URL."
        )
    detail = _excerpt(body) if action != "create" else ""
    raise BrokerError(f"The webhook at {where} refused {action} with {status}{detail}.")
