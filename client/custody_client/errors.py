"""Typed exceptions, built from Custody's error envelope `{"error": {"code", "message", "fields"}}`
and from a request's decision (a denied or expired request is an answer, not an HTTP error).

    CustodyError
    ├── InvalidRequest (400)      ├── NotFound (404)
    ├── Unauthenticated (401)     ├── Conflict (409)
    ├── Forbidden (403)           │   ├── GrantEnded: the grant was revoked or completed
    │   └── Denied: policy or     │   └── Expired: a request's deadline or a grant's time ran out
    │       people said no        ├── RateLimited (429, `retry_after`)
    │       └── NotEligible       ├── Unavailable (503 and other 5xx, network failures)
    └── PendingApproval: still waiting for people when `wait` ran out (`request_id`)
"""

from __future__ import annotations

import contextlib
import email.utils
import time


class CustodyError(Exception):
    """Custody said no, or could not be reached. `code` is stable for machines, `message` is
    Custody's sentence for people, `status` the HTTP status (0 when no answer came)."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int = 0,
        fields: dict | None = None,
        body: dict | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.code = code
        self.status = status
        self.fields = fields or {}
        self.body = body or {}

    def __str__(self) -> str:
        return self.message


class InvalidRequest(CustodyError):
    exit_code = 1


class Unauthenticated(CustodyError):
    """The SVID was refused (expired, wrong audience, unknown trust domain, agent not active)."""

    exit_code = 8


class Forbidden(CustodyError):
    exit_code = 8


class NotFound(CustodyError):
    exit_code = 9


class Conflict(CustodyError):
    exit_code = 1


class GrantEnded(Conflict):
    """The grant was revoked, completed or ended by policy: ask for the privilege again."""

    exit_code = 6


class Expired(Conflict):
    """A request's decision deadline passed before people decided, or a grant's time ran out."""

    exit_code = 6


class Denied(Forbidden):
    """Policy or people refused. `reason` is the policy's sentence (or the deciding person's),
    `policies` the ids of the policies that decided, `request_id` the request."""

    exit_code = 3

    def __init__(self, message: str, *, request_id=None, policies=(), reason="", **kwargs):
        super().__init__(message, **kwargs)
        self.request_id = request_id
        self.policies = list(policies)
        self.reason = reason or message


class NotEligible(Denied):
    """The agent is not eligible for the privilege (or not for that long, or not in that
    environment, or no longer): its sponsor can make it eligible."""

    exit_code = 4


class RateLimited(CustodyError):
    """Too many requests: `retry_after` is the number of seconds Custody asked to wait."""

    exit_code = 7


class Unavailable(CustodyError):
    """Custody could not answer: a 5xx, or no connection. Safe calls were already retried."""

    exit_code = 10


class PendingApproval(CustodyError):
    """People have not decided yet and `wait` ran out. `request_id` resumes the wait
    (`Client.wait_for(request_id)`)."""

    exit_code = 5

    def __init__(self, message: str, *, request_id: int, **kwargs):
        super().__init__(message, code="pending", **kwargs)
        self.request_id = request_id


ELIGIBILITY_POLICIES = frozenset(
    {"not-eligible", "eligibility-ended", "eligibility-max-duration", "eligibility-environment"}
)

_BY_STATUS = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
}
_BY_CODE = {
    "grant_not_active": GrantEnded,
    "parent_grant_not_active": GrantEnded,
    "request_expired": Expired,
    "policy_denied": Denied,
}


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        moment = email.utils.parsedate_to_datetime(value)
        return max(0.0, moment.timestamp() - time.time())
    return None


def from_response(status: int, body, headers) -> CustodyError:
    """The exception for an error answer (any status >= 400)."""
    envelope = body.get("error") if isinstance(body, dict) else None
    if isinstance(envelope, str):
        # The OAuth endpoints answer RFC 6749 §5.2 (`error`, `error_description`), with
        # Custody's envelope under `custody_error`.
        envelope = body.get("custody_error") or {
            "code": envelope,
            "message": body.get("error_description"),
        }
    if not isinstance(envelope, dict):
        envelope = {}
    code = str(envelope.get("code") or f"http_{status}")
    message = str(envelope.get("message") or f"Custody answered HTTP {status}.")
    fields = envelope.get("fields") if isinstance(envelope.get("fields"), dict) else {}
    kwargs = {
        "code": code,
        "status": status,
        "fields": fields,
        "body": body,
        "retry_after": retry_after_seconds(headers.get("Retry-After")),
    }
    if status == 429:
        return RateLimited(message, **kwargs)
    if status >= 500:
        return Unavailable(message, **kwargs)
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, CustodyError)
    if cls is Denied:
        return Denied(message, reason=message.split(": ", 1)[-1], **kwargs)
    return cls(message, **kwargs)


def from_decision(request: dict) -> CustodyError:
    """The exception for a request that was refused or ran out of time (a 2xx answer)."""
    decision = request.get("decision") or {}
    policies = decision.get("policies") or []
    request_id = request.get("id")
    if request.get("status") == "expired":
        return Expired(
            f"Request #{request_id} expired before people decided it.",
            code="request_expired",
            body=request,
        )
    if request.get("status") == "cancelled":
        return Conflict(
            f"Request #{request_id} was cancelled.", code="request_cancelled", body=request
        )
    # The policy's sentence when policy refused; who refused when people did.
    if decision.get("outcome") == "deny":
        reason = decision.get("reason") or decision.get("final") or "Denied by policy."
    else:
        reason = decision.get("final") or decision.get("reason") or "Denied."
    cls = NotEligible if ELIGIBILITY_POLICIES.intersection(policies) else Denied
    return cls(
        reason,
        code="not_eligible" if cls is NotEligible else "denied",
        request_id=request_id,
        policies=policies,
        reason=reason,
        body=request,
    )
