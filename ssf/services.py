"""Shared Signals, the transmitter side: Security Event Tokens (RFC 8417) written to an outbox in
the transaction that ends a grant or deactivates an agent, pushed (RFC 8935) by a Celery task
sent on commit and retried with back-off, or polled and acknowledged (RFC 8936).

Lock order: the outbox rows are written after the grants (and the agent) are locked, before the
audit chain head; a push attempt claims its row with one conditional UPDATE and locks nothing."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from agents.models import Agent
from approvals.models import Grant
from approvals.signals import GrantEnding
from approvals.tokens import jwt_sign_typed
from audit.services import Actor, record
from core.errors import InvalidInput, NotFound
from ssf.models import ACCOUNT_DISABLED, SESSION_REVOKED, SecurityEvent, Stream

logger = logging.getLogger(__name__)

SET_TYPE = "secevent+jwt"
PUSH_TASK = "ssf.tasks.push_security_event"
# Who started the ending, in CAEP's words (`initiating_entity`).
_INITIATOR = {
    "revoked": "admin",
    "completed": "user",
    "expired": "system",
    "cascade": "system",
    "agent_suspended": "admin",
    "policy": "policy",
}


def _set_body(*, stream: Stream, now: datetime, sub_id: dict, event_type: str, event: dict):
    return {
        "iss": settings.CUSTODY_ISSUER,
        "iat": int(now.timestamp()),
        "jti": uuid.uuid4().hex,
        "aud": stream.receiver.spiffe_id,
        "sub_id": sub_id,
        "events": {event_type: event},
    }


def _outbox_write(events: list[SecurityEvent]) -> None:
    if not events:
        return
    SecurityEvent.objects.bulk_create(events)
    push_ids = [event.pk for event in events if event.stream.delivery == Stream.Delivery.PUSH]
    if push_ids:
        transaction.on_commit(lambda: security_events_enqueue(event_ids=push_ids))


def _event(stream: Stream, body: dict, *, event_type: str, now, **subject) -> SecurityEvent:
    return SecurityEvent(
        stream=stream,
        jti=body["jti"],
        event_type=event_type,
        token=jwt_sign_typed(body, typ=SET_TYPE),
        created_at=now,
        **subject,
    )


def security_events_for_grant_endings(*, endings: Iterable[GrantEnding]) -> int:
    """In the ending's transaction: one `session-revoked` SET per ended grant for each enabled
    stream whose resource server serves the grant's audience. Returns how many were written."""
    endings = list(endings)
    streams = list(Stream.objects.filter(enabled=True).select_related("receiver"))
    if not endings or not streams:
        return 0
    grants = {
        row["pk"]: row
        for row in Grant.objects.filter(pk__in=[ending.grant_id for ending in endings]).values(
            "pk", "agent__spiffe_id", "privilege__resource", "scope", "task_id"
        )
    }
    events = []
    for ending in endings:
        grant = grants[ending.grant_id]
        for stream in streams:
            if not stream.receiver.may_introspect(grant["privilege__resource"]):
                continue
            now = timezone.now()
            body = _set_body(
                stream=stream,
                now=now,
                sub_id={
                    "format": "complex",
                    "user": {"format": "uri", "uri": grant["agent__spiffe_id"]},
                    "session": {"format": "opaque", "id": str(ending.grant_id)},
                },
                event_type=SESSION_REVOKED,
                event={
                    "event_timestamp": int(ending.ended_at.timestamp()),
                    "initiating_entity": _INITIATOR.get(ending.reason, "system"),
                    "reason_admin": {"en": f"Grant {ending.grant_id} ended: {ending.reason}."},
                    "custody": {
                        "grant_id": ending.grant_id,
                        "reason": ending.reason,
                        "aud": grant["privilege__resource"],
                        "scope": grant["scope"],
                        "task_id": grant["task_id"],
                        "cascade_from": ending.cascade_from,
                    },
                },
            )
            events.append(
                _event(stream, body, event_type=SESSION_REVOKED, now=now, grant_id=ending.grant_id)
            )
    _outbox_write(events)
    return len(events)


def security_events_for_agent_deactivated(*, agent: Agent, status: str) -> int:
    """In the suspension's transaction: an `account-disabled` SET to every enabled stream, so a
    resource server refuses every token naming the agent issued until now (its grants' own
    `session-revoked` events follow from their endings)."""
    streams = list(Stream.objects.filter(enabled=True).select_related("receiver"))
    now = timezone.now()
    events = []
    for stream in streams:
        body = _set_body(
            stream=stream,
            now=now,
            sub_id={"format": "uri", "uri": agent.spiffe_id},
            event_type=ACCOUNT_DISABLED,
            event={
                "event_timestamp": int(now.timestamp()),
                "reason_admin": {"en": f"Agent {agent.spiffe_id} {status}."},
                "custody": {"agent": agent.spiffe_id, "status": status},
            },
        )
        events.append(_event(stream, body, event_type=ACCOUNT_DISABLED, now=now, agent_id=agent.pk))
    _outbox_write(events)
    return len(events)


def security_events_enqueue(*, event_ids: list[int]) -> None:
    """After commit: one push task per event. Never raises: with the broker down, the sweep
    sends them later (the rows are committed)."""
    for event_id in event_ids:
        try:
            current_app.send_task(PUSH_TASK, args=[event_id])
        except Exception:
            logger.exception("Could not enqueue the push of security event %s.", event_id)
            return


def _backoff(attempts: int) -> int:
    return min(2 ** max(attempts - 1, 0), settings.CUSTODY_SSF_PUSH_MAX_BACKOFF_SECONDS)


def _post(stream: Stream, token: str) -> tuple[int, str]:
    headers = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}
    if stream.authorization_header:
        headers["Authorization"] = stream.authorization_header
    http_request = urllib.request.Request(  # noqa: S310  (an admin-set http(s) URL field)
        stream.endpoint_url, data=token.encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(  # noqa: S310
            http_request, timeout=settings.CUSTODY_SSF_PUSH_TIMEOUT_SECONDS
        ) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(500).decode(errors="replace")


def security_event_push(*, event_id: int) -> tuple[str, int]:
    """One delivery attempt. Returns (outcome, seconds before the next attempt), the outcome
    one of `delivered`, `retry`, `failed`, `skipped` (delivered, given up, not due or claimed
    by another attempt: safe to run twice)."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.CUSTODY_SSF_PUSH_TIMEOUT_SECONDS * 2 + 5)
    claimed = (
        SecurityEvent.objects.filter(
            pk=event_id,
            delivered_at__isnull=True,
            failed_at__isnull=True,
            stream__enabled=True,
            stream__delivery=Stream.Delivery.PUSH,
        )
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(next_attempt_at=lease, attempts=F("attempts") + 1)
    )
    if not claimed:
        return "skipped", 0
    event = SecurityEvent.objects.select_related("stream", "stream__receiver").get(pk=event_id)
    try:
        status, body = _post(event.stream, event.token)
    except (OSError, ValueError) as exc:
        status, body = 0, f"{type(exc).__name__}: {exc}"
    if status in (200, 202, 204):
        with transaction.atomic():
            if SecurityEvent.objects.filter(pk=event_id, delivered_at__isnull=True).update(
                delivered_at=timezone.now(), last_error=""
            ):
                record(
                    actor=Actor.system("ssf"),
                    verb="security_event.delivered",
                    agent_id=event.stream.receiver_id,
                    grant_id=event.grant_id,
                    data={"jti": event.jti, "attempts": event.attempts},
                )
        return "delivered", 0
    error = f"HTTP {status} {body}".strip() if status else body
    # RFC 8935 §2.3: a 400 says this SET will never be accepted; sending it again is useless.
    permanent = status == 400 or event.attempts >= settings.CUSTODY_SSF_PUSH_MAX_ATTEMPTS
    if permanent:
        with transaction.atomic():
            SecurityEvent.objects.filter(pk=event_id).update(
                failed_at=timezone.now(), last_error=error[:500], next_attempt_at=None
            )
            record(
                actor=Actor.system("ssf"),
                verb="security_event.undeliverable",
                agent_id=event.stream.receiver_id,
                grant_id=event.grant_id,
                data={"jti": event.jti, "attempts": event.attempts, "error": error[:300]},
            )
        return "failed", 0
    countdown = _backoff(event.attempts)
    SecurityEvent.objects.filter(pk=event_id).update(
        next_attempt_at=timezone.now() + timedelta(seconds=countdown), last_error=error[:500]
    )
    return "retry", countdown


def security_events_sweep(*, limit: int = 500) -> int:
    """Push events whose task was lost (the broker down at commit, a retry message gone):
    sent again once due. A push attempt's claim makes a duplicate harmless."""
    now = timezone.now()
    grace = now - timedelta(seconds=5)
    due = list(
        SecurityEvent.objects.filter(
            delivered_at__isnull=True,
            failed_at__isnull=True,
            stream__enabled=True,
            stream__delivery=Stream.Delivery.PUSH,
        )
        .filter(
            Q(next_attempt_at__isnull=True, created_at__lte=grace)
            | Q(next_attempt_at__lte=now - timedelta(seconds=1))
        )
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    security_events_enqueue(event_ids=due)
    return len(due)


def _stream_for_poll(receiver: Agent) -> Stream:
    stream = Stream.objects.filter(receiver=receiver, enabled=True).first()
    if stream is None or stream.delivery != Stream.Delivery.POLL:
        raise NotFound(
            "No poll stream is configured for this resource server; ask an admin to add one "
            "(Shared Signals streams) with delivery 'poll'.",
            code="no_poll_stream",
        )
    return stream


def security_events_poll(
    *,
    receiver: Agent,
    ack: list[str],
    errors: dict,
    max_events: int,
    return_immediately: bool,
) -> dict:
    """RFC 8936: acknowledge what the receiver has processed, then hand it what is pending
    (waiting up to CUSTODY_SSF_POLL_WAIT_SECONDS for something, unless asked not to)."""
    if not isinstance(ack, list) or not all(isinstance(jti, str) for jti in ack):
        raise InvalidInput("'ack' is a list of jti strings.", code="invalid_request")
    if not isinstance(errors, dict):
        raise InvalidInput("'setErrs' is an object keyed by jti.", code="invalid_request")
    if not isinstance(max_events, int) or isinstance(max_events, bool) or not max_events >= 0:
        raise InvalidInput("'maxEvents' is a whole number, 0 or more.", code="invalid_request")
    max_events = min(max_events, 1000)
    stream = _stream_for_poll(receiver)
    seen = [*ack, *[jti for jti in errors if isinstance(jti, str)]]
    if seen:
        with transaction.atomic():
            acknowledged = SecurityEvent.objects.filter(
                stream=stream, jti__in=seen, delivered_at__isnull=True
            ).update(delivered_at=timezone.now())
            if acknowledged:
                record(
                    actor=Actor.for_agent(receiver),
                    verb="security_event.acknowledged",
                    agent_id=receiver.pk,
                    data={
                        "count": acknowledged,
                        "errors": {k: errors[k] for k in list(errors)[:20]},
                    },
                )
    deadline = time.monotonic() + settings.CUSTODY_SSF_POLL_WAIT_SECONDS
    pending = SecurityEvent.objects.filter(
        stream=stream, delivered_at__isnull=True, failed_at__isnull=True
    ).order_by("pk")
    while True:
        rows = list(pending.values_list("jti", "token")[: max_events + 1]) if max_events else []
        if rows or return_immediately or max_events == 0 or time.monotonic() >= deadline:
            break
        time.sleep(settings.CUSTODY_SSF_POLL_INTERVAL_SECONDS)
    return {"sets": dict(rows[:max_events]), "moreAvailable": len(rows) > max_events}


def stream_save(*, stream: Stream, actor: Actor) -> Stream:
    """An admin adds or changes a resource server's stream: evidence, like every change of who
    hears about grants."""
    created = stream.pk is None
    if not stream.receiver.is_resource_server:
        raise InvalidInput(
            "Only a registered resource server has a stream.", code="not_a_resource_server"
        )
    with transaction.atomic():
        stream.save()
        record(
            actor=actor,
            verb="ssf_stream.created" if created else "ssf_stream.changed",
            agent_id=stream.receiver_id,
            data={
                "delivery": stream.delivery,
                "endpoint_url": stream.endpoint_url,
                "enabled": stream.enabled,
            },
        )
    return stream
