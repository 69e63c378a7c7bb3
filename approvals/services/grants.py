"""Grants: issuing one, and every way one ends (revoked, completed, expired, cascaded, the
agent suspended), with the expiry notice and the cancelling of orphaned delegations."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from approvals import notifications
from approvals.lineage import grant_approvers, grant_descendant_ids
from approvals.models import (
    AccessRequest,
    Grant,
)
from approvals.services.common import (
    lock_in_pk_order,
    on_commit_request_finished,
    request_transition,
)
from approvals.signals import GrantEnding, grants_ended
from audit.services import Actor, deferred_evidence, record
from core import log_context
from core.errors import Conflict, NotFound

logger = logging.getLogger(__name__)

Status = AccessRequest.Status


Reason = Grant.RevokeReason


def grant_issue(
    access_request: AccessRequest, *, actor: Actor, approvers: list[str] | None = None
) -> Grant:
    """The grant's clock starts now, at the final approval, never at the request. `approvers`,
    when the caller just recorded them (an automatic approval: ["policy"]), are not read back."""
    now = timezone.now()
    expires_at = now + timedelta(seconds=access_request.duration_seconds)
    parent = access_request.parent_grant
    if parent is not None:
        if not parent.is_active(now):
            raise Conflict(
                f"Grant #{parent.pk}, which this delegates from, has ended.",
                code="parent_grant_not_active",
            )
        expires_at = min(expires_at, parent.expires_at)
    if access_request.extension_of_id is not None:
        first = first_of_extensions(access_request.extension_of)
        expires_at = min(
            expires_at,
            first.issued_at + timedelta(seconds=access_request.privilege.max_duration_seconds),
        )
        if expires_at <= now:
            raise Conflict(
                "The privilege's maximum, counted from the first grant, has passed.",
                code="extension_exceeds_maximum",
            )
    privilege = access_request.privilege
    # Due within the ETA horizon: the expiry task is claimed in the grant's own INSERT and sent
    # once it commits, rather than claimed by an UPDATE of its own after the commit (a second
    # transaction, a second WAL flush, on every grant); enqueue_upcoming_expiries hands on the
    # later ones as they come into range.
    horizon = now + timedelta(seconds=settings.CUSTODY_ETA_HORIZON_SECONDS)
    claim_expiry = expires_at <= horizon
    grant = Grant.objects.create(
        agent=access_request.agent,
        privilege=privilege,
        access_request=access_request,
        parent=parent,
        depth=(parent.depth + 1) if parent else 0,
        task_id=access_request.task_id,
        scope=privilege.name,
        issued_at=now,
        expires_at=expires_at,
        expiry_enqueued_at=now if claim_expiry else None,
    )
    if approvers is not None:
        grant._custody_approvers = list(approvers)  # what lineage.grant_approvers remembers
    log_context.bind(
        grant_id=grant.pk, access_request_id=access_request.pk, task_id=access_request.task_id
    )
    record(
        actor=actor,
        verb="grant.issued",
        agent_id=grant.agent_id,
        access_request_id=access_request.pk,
        grant_id=grant.pk,
        data={
            "privilege": privilege.name,
            "task_id": grant.task_id,
            "issued_at": now.isoformat(),
            "expires_at": expires_at.isoformat(),
            "approvers": grant_approvers(grant),
            "parent_grant_id": grant.parent_id,
        },
    )
    logger.info(
        "Grant #%s issued: %s until %s",
        grant.pk,
        privilege.name,
        expires_at.isoformat(),
        extra={"event": "grant.issued"},
    )
    if claim_expiry:
        transaction.on_commit(lambda: _send_expiry(grant.pk, expires_at))
    return grant


def grant_expiry_enqueue(*, grant_id: int, expires_at) -> bool:
    """Claim the grant's expiry task (once) and hand it to the broker with its ETA.

    Never raises: with the broker down the claim is released and the sweep ends the grant."""
    claimed = Grant.objects.filter(
        pk=grant_id, expiry_enqueued_at__isnull=True, revoked_at__isnull=True
    ).update(expiry_enqueued_at=timezone.now())
    if not claimed:
        return False
    return _send_expiry(grant_id, expires_at)


def _send_expiry(grant_id: int, expires_at) -> bool:
    """The claimed expiry task to the broker with its ETA. Never raises: with the broker down
    the claim is released (enqueue_upcoming_expiries tries again) and the sweep ends the grant."""
    try:
        current_app.send_task("approvals.tasks.expire_grant", args=[grant_id], eta=expires_at)
    except Exception:
        logger.exception(
            "Could not enqueue the expiry of grant %s; the sweep will end it.", grant_id
        )
        Grant.objects.filter(pk=grant_id).update(expiry_enqueued_at=None)
        return False
    return True


def grants_expiry_enqueue_upcoming(*, horizon, limit: int) -> int:
    """Claim up to `limit` grants due by `horizon` whose expiry task was never sent, in one
    short transaction (skipping rows another enqueuer holds), then send their tasks over one
    producer. Returns how many were sent; a send that fails releases its claim and the rest's,
    and the sweep ends those grants."""
    with transaction.atomic():
        claimed = list(
            Grant.objects.due(horizon)
            .filter(expiry_enqueued_at__isnull=True)
            .select_for_update(no_key=True, skip_locked=True)
            .order_by("expires_at", "pk")
            .values_list("pk", "expires_at")[:limit]
        )
        if not claimed:
            return 0
        Grant.objects.filter(pk__in=[pk for pk, _ in claimed]).update(
            expiry_enqueued_at=timezone.now()
        )
    sent = 0
    try:
        with current_app.producer_or_acquire() as producer:
            for grant_id, expires_at in claimed:
                current_app.send_task(
                    "approvals.tasks.expire_grant",
                    args=[grant_id],
                    eta=expires_at,
                    producer=producer,
                )
                sent += 1
    except Exception:
        logger.exception(
            "Could not enqueue %s expiry task(s); the sweep will end their grants.",
            len(claimed) - sent,
        )
        Grant.objects.filter(pk__in=[pk for pk, _ in claimed[sent:]]).update(
            expiry_enqueued_at=None
        )
    return sent


def first_of_extensions(grant: Grant) -> Grant:
    """The grant an extension chain started from: its issue time bounds every extension."""
    first = grant
    while first.access_request.extension_of_id is not None:
        first = Grant.objects.select_related("access_request").get(
            pk=first.access_request.extension_of_id
        )
    return first


def _record_endings(
    ended: list[tuple[Grant, str, int | None]], *, now, actor: Actor, detail: str = ""
) -> None:
    """Mark locked grants ended (one UPDATE per reason), record each, tell the people who
    follow them after commit. `ended` holds (grant, reason, the grant it cascaded from)."""
    by_reason: dict[str, list[int]] = {}
    for ending, why, _ in ended:
        by_reason.setdefault(why, []).append(ending.pk)
        ending.revoked_at, ending.revoke_reason, ending.revoked_by = now, why, actor.id
    for why, pks in by_reason.items():
        Grant.objects.filter(pk__in=pks).update(
            revoked_at=now, revoke_reason=why, revoked_by=actor.id
        )
    for ending, why, cascade_from in ended:
        logger.info(
            "Grant #%s ended: %s",
            ending.pk,
            why,
            extra={"event": "grant.ended", "grant_id": ending.pk, "reason": why},
        )
        record(
            actor=actor,
            verb="grant.expired" if why == Reason.EXPIRED else "grant.revoked",
            agent_id=ending.agent_id,
            access_request_id=ending.access_request_id,
            grant_id=ending.pk,
            data={
                "reason": why,
                "detail": detail[:500],
                "expires_at": ending.expires_at,
                "held_seconds": round((now - ending.issued_at).total_seconds(), 3),
                "cascade_from": cascade_from,
            },
        )
    grants_ended.send(
        sender=Grant,
        endings=[
            GrantEnding(
                grant_id=ending.pk,
                reason=why,
                ended_at=now,
                cascade_from=cascade_from,
            )
            for ending, why, cascade_from in ended
        ],
    )
    ended_ids = [ending.pk for ending, _, _ in ended]
    request_ids = [ending.access_request_id for ending, _, _ in ended]
    notifications.grants_ended(request_ids)
    transaction.on_commit(lambda: delegations_cancel_orphaned(grant_ids=ended_ids))


def _lock_live_descendants(grant_ids: list[int]) -> list[Grant]:
    descendant_ids = grant_descendant_ids(grant_ids)
    if not descendant_ids:
        return []
    return lock_in_pk_order(Grant.objects.filter(pk__in=descendant_ids, revoked_at__isnull=True))


def grant_end(*, grant_id: int, reason: str, actor: Actor, detail: str = "") -> bool:
    """End a grant and, in the same transaction, every grant delegated from it.

    Returns False when it had already ended (a rerun changes nothing)."""
    with transaction.atomic(), deferred_evidence():
        grant = Grant.objects.select_for_update(no_key=True).filter(pk=grant_id).first()
        if grant is None or grant.revoked_at is not None:
            return False
        now = timezone.now()
        if reason != Reason.EXPIRED and now >= grant.expires_at:
            reason = Reason.EXPIRED  # its time ran out first: say so
        ended = [(grant, reason, None)]
        ended += [(child, Reason.CASCADE, grant.pk) for child in _lock_live_descendants([grant.pk])]
        _record_endings(ended, now=now, actor=actor, detail=detail)
    return True


def grants_expire_due(
    *, limit: int = 500, grant_id: int | None = None, including: int | None = None
) -> int:
    """End, in one transaction, up to `limit` grants whose time has come (or just `grant_id`
    if it has), with everything delegated from them; `including` is ended too if its time has
    come, even when `limit` earlier ones are due (the expiry task of that grant: its own grant
    and the backlog in one transaction). Grants another transaction is ending right now are
    skipped, not waited for (so the order the rows are locked in cannot deadlock). Returns how
    many grants expired (cascades aside). Idempotent: a rerun finds nothing due."""
    now = timezone.now()
    with transaction.atomic(), deferred_evidence():
        due = Grant.objects.due(now)
        if grant_id is not None:
            due = due.filter(pk=grant_id)
        selected = list(
            due.select_for_update(no_key=True, skip_locked=True).order_by("expires_at", "pk")[
                :limit
            ]
        )
        if including is not None and all(grant.pk != including for grant in selected):
            selected += (
                Grant.objects.due(now)
                .filter(pk=including)
                .select_for_update(no_key=True, skip_locked=True)
            )
        if not selected:
            return 0
        children = _lock_live_descendants([grant.pk for grant in selected])
        cascading = {child.pk for child in children}
        # A due grant whose ancestor expires in this batch ends as a cascade from it.
        roots = [grant for grant in selected if grant.pk not in cascading]
        ended = [(grant, Reason.EXPIRED, None) for grant in roots]
        ended += [(child, Reason.CASCADE, child.parent_id) for child in children]
        _record_endings(ended, now=now, actor=Actor.system("expiry"))
    return len(roots)


def grant_revoke(*, grant: Grant, actor: Actor, detail: str = "") -> Grant:
    if not grant_end(grant_id=grant.pk, reason=Reason.REVOKED, actor=actor, detail=detail):
        raise Conflict(f"Grant #{grant.pk} has already ended.", code="grant_not_active")
    grant.refresh_from_db()
    return grant


def grant_complete(*, grant: Grant, agent: Agent) -> Grant:
    """The task is done: the privilege ends now."""
    if grant.agent_id != agent.pk:
        raise NotFound("Not found.")
    if not grant.is_active():
        grant_end(grant_id=grant.pk, reason=Reason.EXPIRED, actor=Actor.system("enforcement"))
        raise Conflict(f"Grant #{grant.pk} has already ended.", code="grant_not_active")
    if not grant_end(grant_id=grant.pk, reason=Reason.COMPLETED, actor=Actor.for_agent(agent)):
        raise Conflict(f"Grant #{grant.pk} has already ended.", code="grant_not_active")
    grant.refresh_from_db()
    return grant


def grant_expire(*, grant_id: int) -> bool:
    """Ends one grant whose time has come (with its descendants). Idempotent."""
    return grants_expire_due(grant_id=grant_id) > 0


def grants_revoke_for_agent(*, agent: Agent, actor: Actor, reason_detail: str = "") -> int:
    """Invariant 5: a suspended or retired agent keeps no grant and no pending request.

    Called with the agent row already locked (agents.services), then in the lock order: its
    pending requests, then its live grants (pk order) with what was delegated from them; the
    evidence is appended last. Ends whatever is live, even when the agent was already
    suspended: nothing may outlive the kill switch."""
    ended = 0
    with transaction.atomic(), deferred_evidence():
        for access_request in lock_in_pk_order(
            AccessRequest.objects.filter(agent=agent, status=Status.PENDING)
        ):
            request_transition(access_request, Status.CANCELLED, reason=f"agent {agent.status}")
            record(
                actor=actor,
                verb="request.cancelled",
                agent_id=agent.pk,
                access_request_id=access_request.pk,
                data={"why": f"agent {agent.status}"},
            )
            on_commit_request_finished(access_request.pk)
        for grant_id in (
            Grant.objects.filter(agent=agent, revoked_at__isnull=True)
            .order_by("pk")
            .values_list("pk", flat=True)
        ):
            ended += grant_end(
                grant_id=grant_id, reason=Reason.AGENT_SUSPENDED, actor=actor, detail=reason_detail
            )
    return ended


def grant_expiry_notice(*, grant_id: int) -> bool:
    """CUSTODY_EXPIRY_NOTICE_SECONDS before a long grant ends, its sponsor and team hear of it,
    once."""
    now = timezone.now()
    notice = timedelta(seconds=settings.CUSTODY_EXPIRY_NOTICE_SECONDS)
    with transaction.atomic():
        grant = Grant.objects.filter(pk=grant_id).first()
        if grant is None or not grant.is_active(now) or grant.expires_at - notice > now:
            return False
        long_enough = timedelta(seconds=settings.CUSTODY_EXPIRY_NOTICE_MIN_GRANT_SECONDS)
        if grant.expires_at - grant.issued_at < long_enough:
            return False
        claimed = Grant.objects.filter(pk=grant_id, expiry_notice_sent_at__isnull=True).update(
            expiry_notice_sent_at=now
        )
        if not claimed:
            return False
        record(
            actor=Actor.system("expiry"),
            verb="grant.expiry_notice",
            agent_id=grant.agent_id,
            access_request_id=grant.access_request_id,
            grant_id=grant.pk,
            data={"expires_at": grant.expires_at},
        )
        notifications.grant_expiring(grant_id)
    return True


def delegations_cancel_orphaned(*, grant_ids: Iterable[int]) -> int:
    """Runs after grants end: delegation requests from them that still wait for people are
    cancelled, so nobody is asked to hand down a privilege that no longer exists. (Approving
    one anyway is refused: the mint re-checks the parent under its lock.)"""
    cancelled = 0
    waiting = (
        AccessRequest.objects.filter(parent_grant_id__in=list(grant_ids), status=Status.PENDING)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for access_request_id in waiting:
        with transaction.atomic():
            access_request = (
                AccessRequest.objects.select_for_update(no_key=True)
                .filter(pk=access_request_id, status=Status.PENDING)
                .first()
            )
            if access_request is None:
                continue
            request_transition(access_request, Status.CANCELLED, reason="parent grant ended")
            record(
                actor=Actor.system("cascade"),
                verb="request.cancelled",
                agent_id=access_request.agent_id,
                access_request_id=access_request.pk,
                data={
                    "why": "parent grant ended",
                    "parent_grant_id": access_request.parent_grant_id,
                },
            )
            on_commit_request_finished(access_request.pk)
        cancelled += 1
    return cancelled


def grant_end_locked(*, grant: Grant, reason: str, actor: Actor, detail: str = "") -> None:
    """End a live grant the caller holds locked, with every grant delegated from it, inside the
    caller's transaction (which locked the agents first, as the lock order asks)."""
    ended = [(grant, reason, None)]
    ended += [(child, Reason.CASCADE, grant.pk) for child in _lock_live_descendants([grant.pk])]
    _record_endings(ended, now=timezone.now(), actor=actor, detail=detail)
