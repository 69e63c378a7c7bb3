"""What each call says to Custody, written once for the sync and the async client.

An operation is a generator: it yields a `Call` (or a `Sleep`) and is sent back the `Answer`
(always a 2xx: errors are raised by the driver, after its retries). `Client` drives operations
with httpx.Client, `AsyncClient` with httpx.AsyncClient."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta

from custody_client.errors import PendingApproval, from_decision

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


@dataclass
class Call:
    method: str
    path: str
    json: dict | None = None
    params: dict | None = None
    # Safe to send again after a dropped connection or a 5xx (it changes nothing twice).
    idempotent: bool = False
    # 429 and 503 mean Custody wrote nothing; False for calls that spend something anyway
    # (a delegation's single-use actor token).
    retry_refusals: bool = True
    read_timeout: float | None = None


@dataclass
class Answer:
    status: int
    headers: dict
    body: dict = field(default_factory=dict)


@dataclass
class Sleep:
    seconds: float


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(
    r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s?)?\s*$"
)


def seconds_of(duration) -> int:
    """A duration as whole seconds: an int, a timedelta, or text such as `90`, `30m`, `1h30m`."""
    if isinstance(duration, timedelta):
        return int(duration.total_seconds())
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        return int(duration)
    if isinstance(duration, str):
        match = _DURATION.match(duration)
        if match and any(match.groups()):
            days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
            return days * 86400 + hours * 3600 + minutes * 60 + seconds
    raise ValueError(f"Not a duration: {duration!r} (give seconds, a timedelta, or e.g. '30m').")


def intent_of(intent, privilege: str) -> dict:
    """The intent Custody records and compares tool calls with. A sentence alone is the
    justification, for the privilege's action on its whole resource."""
    if isinstance(intent, str):
        resource, _, action = privilege.partition(":")
        return {"action": action or privilege, "target": resource, "justification": intent}
    if isinstance(intent, dict):
        return {key: intent[key] for key in ("action", "target", "justification") if key in intent}
    raise TypeError("intent is a sentence or {'action', 'target', 'justification'}.")


def request_body(privilege, task_id, intent, duration, context) -> dict:
    return {
        "privilege": privilege,
        "task_id": task_id,
        "duration_seconds": seconds_of(duration),
        "intent": intent_of(intent, privilege),
        "context": context or {},
    }


def _deadline(wait) -> float | None:
    """None: wait until people decide. Otherwise the monotonic time to stop waiting."""
    if wait is True or wait is None:
        return None
    if wait is False:
        return time.monotonic()
    return time.monotonic() + seconds_of(wait)


def settle(request: dict, *, wait, max_poll: int):
    """Long-poll a request until it is decided (or `wait` runs out); returns the approved
    request and its first token answer, raises the decision's exception otherwise."""
    stop = _deadline(wait)
    while request.get("status") == "pending":
        remaining = math.inf if stop is None else stop - time.monotonic()
        if remaining <= 0:
            raise PendingApproval(
                f"Request #{request['id']} is waiting for people "
                f"({request.get('approvals_received', 0)} of "
                f"{request.get('approvals_required', 1)} approvals).",
                request_id=request["id"],
                body=request,
            )
        poll = max_poll if stop is None else max(1, min(max_poll, math.ceil(remaining)))
        request = (
            yield Call(
                "GET",
                f"/api/v1/requests/{request['id']}",
                params={"wait": poll},
                idempotent=True,
                read_timeout=poll + 15,
            )
        ).body
    if request.get("status") != "approved":
        raise from_decision(request)
    grant = request.get("grant") or {}
    token = grant.get("access_token")
    if not token:  # approved by people: the grant's token_url mints the first one
        token = (yield token_call(grant["id"])).body.get("access_token")
    return request, token


def token_call(grant_id: int) -> Call:
    # A new token each time; sending it twice only mints one more.
    return Call("POST", f"/api/v1/grants/{grant_id}/token", idempotent=True)


def credential_call(grant_id: int) -> Call:
    # Never resent on its own: the credential is delivered once, a second POST is 409.
    # 503 is not retried either: the grant's credential is spent by the failed attempt.
    return Call("POST", f"/api/v1/grants/{grant_id}/credential", retry_refusals=False)


def submit(*, privilege, task_id, intent, duration, context, wait, max_poll):
    body = request_body(privilege, task_id, intent, duration, context)
    request = (yield Call("POST", "/api/v1/requests", json=body)).body
    return (yield from settle(request, wait=wait, max_poll=max_poll))


def resume(*, request_id: int, wait, max_poll):
    request = (yield Call("GET", f"/api/v1/requests/{request_id}", idempotent=True)).body
    return (yield from settle(request, wait=wait, max_poll=max_poll))


def extend(*, grant_id, privilege, duration, intent, context, wait, max_poll):
    body = {
        "duration_seconds": seconds_of(duration),
        "intent": intent_of(intent, privilege),
        "context": context or {},
    }
    request = (yield Call("POST", f"/api/v1/grants/{grant_id}/extend", json=body)).body
    return (yield from settle(request, wait=wait, max_poll=max_poll))


def tool_call_body(tool, target, outcome, action, detail) -> dict:
    body = {"tool": tool, "target": target or "", "outcome": outcome}
    if action:
        body["action"] = action
    if detail is not None:
        body["detail"] = detail
    return body


def delegation_body(
    *, access_token, actor_token, intent, privilege, scope, duration, task_id, context
) -> dict:
    body = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": access_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "actor_token": actor_token,
        "actor_token_type": JWT_TOKEN_TYPE,
        "scope": scope or "",
        "intent": intent_of(intent, scope or privilege),
        "context": context or {},
    }
    if duration is not None:
        body["duration_seconds"] = seconds_of(duration)
    if task_id:
        body["task_id"] = task_id
    return body


@dataclass
class Delegation:
    """The answer to `Grant.delegate`: granted at once (`access_token`, `grant_id`), or waiting
    for the sub-agent's sponsor (`pending`; the sub-agent resumes with `wait_for(request_id)`).
    The sub-agent keeps a granted token fresh with its own client: `client.grant(grant_id)`."""

    request_id: int
    agent: str | None = None
    grant_id: int | None = None
    access_token: str | None = None
    expires_in: int | None = None
    scope: str | None = None

    @property
    def pending(self) -> bool:
        return self.grant_id is None

    @classmethod
    def from_answer(cls, answer: Answer) -> Delegation:
        body = answer.body
        if answer.status == 202:
            return cls(request_id=body.get("request_id", body.get("id")), agent=body.get("agent"))
        return cls(
            request_id=body.get("request_id"),
            grant_id=body.get("grant_id"),
            access_token=body.get("access_token"),
            expires_in=body.get("expires_in"),
            scope=body.get("scope"),
        )
