"""Brokered credentials: made when the agent asks for one, destroyed through an outbox when the
grant ends. `brokers.base` brokers are only ever called from here.

Delivery, exactly once (Vault-style, created on read, never at rest):
1. tx1 locks the grant (lock order: grants, then the credential row, the audit chain head
   last), checks it is live, the caller's, brokered, and has no credential yet, and inserts the
   row `provisioning` with a lease (`next_attempt_at`) no destroy attempt may start before;
2. `broker.create` runs outside any transaction (no network I/O under a row lock);
3. tx2 locks the grant again: still live → `live`, evidence, the secret goes to the agent; the
   grant ended meanwhile (its end path moved the row to `destroy_pending`) → the secret is
   dropped, the destruction is made due at once, 409.
The secret is never stored, logged, audited or sent anywhere but the one HTTP answer: a second
request for it is 409 `credential_already_delivered`.

Destruction: `credentials_for_grant_endings` runs inside the transaction that ends grants (the
`grants_ended` signal) and moves their rows to `destroy_pending`; a task claims a row by a
conditional UPDATE (its lease), calls the idempotent `broker.destroy`, and marks it
`destroyed`; failures back off and the beat sweep retries them until the target confirms."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from agents.models import Agent
from approvals.models import Grant
from approvals.signals import GrantEnding
from audit.services import Actor, record
from brokers.base import BrokerError, BrokerUnavailable, Holder, Issued, get_broker
from brokers.models import BrokeredCredential, PrivilegeBroker
from core.errors import Conflict, DomainError, NotFound, Unavailable

logger = logging.getLogger(__name__)

State = BrokeredCredential.State
DESTROY_TASK = "brokers.tasks.destroy_credential"
_LIVE_STATES = (State.PROVISIONING, State.LIVE)


class BadGateway(DomainError):
    """The target system answered, but not with a credential (502)."""

    status_code = 502
    code = "broker_failed"


@dataclass(frozen=True)
class Delivered:
    credential: BrokeredCredential
    secret: dict[str, Any]


def credential_name(grant_id: int) -> str:
    """Unique and never reused: the grant's id and 8 random hex characters."""
    return f"custody_g{grant_id}_{secrets.token_hex(4)}"


def _holder(grant: Grant) -> Holder:
    """Who the credential is for, as the webhook broker tells the target (no secret)."""
    return Holder(
        agent=grant.agent.spiffe_id,
        privilege=grant.scope,
        grant_id=grant.pk,
        task_id=grant.task_id,
    )


def _lock_grant(grant_id: int) -> Grant | None:
    return Grant.objects.select_for_update(no_key=True).filter(pk=grant_id).first()


def _reserve(*, grant_id: int, agent: Agent) -> BrokeredCredential:
    now = timezone.now()
    with transaction.atomic():
        grant = _lock_grant(grant_id)
        if grant is None or grant.agent_id != agent.pk:
            raise NotFound("Not found.")
        if not grant.is_active(now):
            raise Conflict(f"Grant #{grant.pk} has ended.", code="grant_not_active")
        broker = PrivilegeBroker.objects.filter(privilege_id=grant.privilege_id).first()
        if broker is None or not broker.enabled:
            raise Conflict(
                f"The privilege {grant.scope} has no credential broker: use the grant's access "
                "token.",
                code="no_credential_broker",
            )
        if BrokeredCredential.objects.filter(grant_id=grant.pk).exists():
            raise Conflict(
                f"Grant #{grant.pk}'s credential was already handed out (it is delivered "
                "exactly once and never kept); ask for a new grant if it was lost.",
                code="credential_already_delivered",
            )
        return BrokeredCredential.objects.create(
            grant=grant,
            name=credential_name(grant.pk),
            kind=broker.kind,
            config=broker.config,
            target=broker.target,
            state=State.PROVISIONING,
            created_at=now,
            expires_at=grant.expires_at,
            next_attempt_at=now
            + timedelta(seconds=settings.CUSTODY_BROKER_PROVISION_LEASE_SECONDS),
        )


def _evidence(credential: BrokeredCredential, **extra) -> dict:
    return {
        "name": credential.name,
        "kind": credential.kind,
        "target": credential.target,
        "expires_at": credential.expires_at.isoformat(),
        **extra,
    }


def _creation_failed(credential: BrokeredCredential, *, grant: Grant, error: str) -> None:
    """It may exist half-made: destroy it like any other."""
    with transaction.atomic():
        _lock_grant(grant.pk)
        changed = BrokeredCredential.objects.filter(
            pk=credential.pk, state=State.PROVISIONING
        ).update(
            state=State.DESTROY_PENDING,
            end_requested_at=timezone.now(),
            next_attempt_at=None,
            last_error=error[:500],
        )
        if changed:
            record(
                actor=Actor.system("brokers"),
                verb="credential.create_failed",
                agent_id=grant.agent_id,
                grant_id=grant.pk,
                data=_evidence(credential, error=error[:300]),
            )
        # A row the grant's end already moved is made due now that creation is over.
        BrokeredCredential.objects.filter(pk=credential.pk, state=State.DESTROY_PENDING).update(
            next_attempt_at=None
        )
        transaction.on_commit(lambda: credentials_destroy_enqueue(credential_ids=[credential.pk]))


def credential_fetch(*, grant_id: int, agent: Agent) -> Delivered:
    """The agent's one delivery of its grant's credential (see the module's docstring)."""
    credential = _reserve(grant_id=grant_id, agent=agent)
    grant = credential.grant
    broker = get_broker(credential.kind)
    try:
        issued: Issued = broker.create(
            credential.config,
            name=credential.name,
            expires_at=credential.expires_at,
            holder=_holder(grant),
        )
    except BrokerUnavailable as exc:
        _creation_failed(credential, grant=grant, error=f"unavailable: {exc}")
        raise Unavailable(
            f"The target system of {grant.scope} cannot be reached ({exc}); no credential was "
            "made. This grant's credential is spent: ask for a new grant once it is back.",
            retry_after=30,
            code="broker_unavailable",
        ) from None
    except Exception as exc:  # noqa: BLE001  (any failure: the row must leave provisioning)
        message = str(exc) if isinstance(exc, BrokerError) else type(exc).__name__
        _creation_failed(credential, grant=grant, error=message)
        logger.exception("Broker %s could not create %s.", credential.kind, credential.name)
        raise BadGateway(
            f"The target system of {grant.scope} refused to make the credential ({message}). "
            "This grant's credential is spent: ask for a new grant.",
        ) from None
    now = timezone.now()
    with transaction.atomic():
        grant = _lock_grant(grant_id)
        credential = BrokeredCredential.objects.select_for_update().get(pk=credential.pk)
        if credential.state == State.PROVISIONING and grant.is_active(now):
            credential.state = State.LIVE
            credential.delivered_at = now
            credential.next_attempt_at = None
            credential.details = issued.details
            credential.save(update_fields=["state", "delivered_at", "next_attempt_at", "details"])
            record(
                actor=Actor.for_agent(agent),
                verb="credential.issued",
                agent_id=agent.pk,
                grant_id=grant.pk,
                access_request_id=grant.access_request_id,
                data=_evidence(credential, details=issued.details),
            )
            logger.info(
                "Credential %s issued for grant #%s",
                credential.name,
                grant.pk,
                extra={"event": "credential.issued", "grant_id": grant.pk},
            )
            return Delivered(credential=credential, secret=issued.secret)
        # The grant ended while the broker worked: the secret is dropped, never delivered.
        if credential.state == State.PROVISIONING:
            credential.end_requested_at = now
        credential.state = State.DESTROY_PENDING
        credential.next_attempt_at = None
        credential.save(update_fields=["state", "end_requested_at", "next_attempt_at"])
        transaction.on_commit(lambda: credentials_destroy_enqueue(credential_ids=[credential.pk]))
    raise Conflict(
        f"Grant #{grant_id} ended while its credential was being made; it is being destroyed.",
        code="grant_not_active",
    )


def credentials_for_grant_endings(*, endings: Iterable[GrantEnding]) -> int:
    """Inside the ending's transaction (grants locked): every credential of an ending grant is
    to be destroyed. A row still provisioning keeps its lease: the destroy waits for the
    creation to finish (tx2 makes it due), or for the lease to run out after a crash."""
    grant_ids = [ending.grant_id for ending in endings]
    ids = list(
        BrokeredCredential.objects.filter(grant_id__in=grant_ids, state__in=_LIVE_STATES)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if not ids:
        return 0
    now = timezone.now()
    BrokeredCredential.objects.filter(pk__in=ids, state=State.LIVE).update(
        state=State.DESTROY_PENDING, end_requested_at=now, next_attempt_at=None
    )
    BrokeredCredential.objects.filter(pk__in=ids, state=State.PROVISIONING).update(
        state=State.DESTROY_PENDING, end_requested_at=now
    )
    transaction.on_commit(lambda: credentials_destroy_enqueue(credential_ids=ids))
    return len(ids)


def credentials_destroy_enqueue(*, credential_ids: list[int]) -> None:
    """After commit: one destroy task per credential. Never raises: with the Celery broker
    down the rows are committed and the sweep sends them later."""
    for credential_id in credential_ids:
        try:
            current_app.send_task(DESTROY_TASK, args=[credential_id])
        except Exception:
            logger.exception("Could not enqueue the destruction of credential %s.", credential_id)
            return


def _backoff(attempts: int) -> int:
    return min(2 ** max(attempts - 1, 0), settings.CUSTODY_BROKER_MAX_BACKOFF_SECONDS)


def credential_destroy(*, credential_id: int) -> tuple[str, int]:
    """One destroy attempt. Returns (outcome, seconds before the next attempt): `destroyed`,
    `retry`, or `skipped` (not pending, not due or claimed by another attempt: safe to run
    twice)."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.CUSTODY_BROKER_DESTROY_LEASE_SECONDS)
    claimed = (
        BrokeredCredential.objects.filter(pk=credential_id, state=State.DESTROY_PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(next_attempt_at=lease, attempts=F("attempts") + 1)
    )
    if not claimed:
        return "skipped", 0
    credential = BrokeredCredential.objects.select_related(
        "grant", "grant__agent", "grant__privilege"
    ).get(pk=credential_id)
    try:
        get_broker(credential.kind).destroy(
            credential.config, name=credential.name, holder=_holder(credential.grant)
        )
    except BrokerUnavailable as exc:
        error = f"unavailable: {exc}"
    except Exception as exc:  # noqa: BLE001  (retried like an outage, and logged)
        error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BrokerError) else repr(exc)
        logger.exception("Broker %s could not destroy %s.", credential.kind, credential.name)
    else:
        done = timezone.now()
        with transaction.atomic():
            if BrokeredCredential.objects.filter(
                pk=credential_id, state=State.DESTROY_PENDING
            ).update(state=State.DESTROYED, destroyed_at=done, next_attempt_at=None):
                record(
                    actor=Actor.system("brokers"),
                    verb="credential.destroyed",
                    agent_id=credential.grant.agent_id,
                    grant_id=credential.grant_id,
                    data=_evidence(
                        credential,
                        attempts=credential.attempts,
                        seconds_after_end=round(
                            (done - (credential.end_requested_at or done)).total_seconds(), 3
                        ),
                    ),
                )
        if credential.attempts > 1:
            _target_is_back(credential)
        return "destroyed", 0
    countdown = _backoff(credential.attempts)
    with transaction.atomic():
        BrokeredCredential.objects.filter(pk=credential_id, state=State.DESTROY_PENDING).update(
            next_attempt_at=timezone.now() + timedelta(seconds=countdown), last_error=error[:500]
        )
        if credential.attempts == 1:  # evidence once, not once per retry
            record(
                actor=Actor.system("brokers"),
                verb="credential.destroy_failed",
                agent_id=credential.grant.agent_id,
                grant_id=credential.grant_id,
                data=_evidence(credential, error=error[:300]),
            )
    if credential.attempts >= settings.CUSTODY_BROKER_ALERT_ATTEMPTS:
        logger.error(
            "Credential %s of grant #%s is still not destroyed after %s attempts: %s",
            credential.name,
            credential.grant_id,
            credential.attempts,
            error[:300],
            extra={"event": "credential.destroy_failing", "grant_id": credential.grant_id},
        )
    return "retry", countdown


def _target_is_back(credential: BrokeredCredential) -> None:
    """A destroy succeeded after failing: its target is reachable again, so every destruction
    waiting out its back-off on that target is made due and sent now, rather than each one
    finding out at the end of its own back-off (up to CUSTODY_BROKER_MAX_BACKOFF_SECONDS)."""
    now = timezone.now()
    waiting = BrokeredCredential.objects.filter(
        state=State.DESTROY_PENDING,
        kind=credential.kind,
        config__target=credential.config.get("target"),
        next_attempt_at__gt=now,
        attempts__gt=0,
    ).exclude(last_error="")
    ids = list(waiting.order_by("pk").values_list("pk", flat=True)[:1000])
    if ids:
        # A row whose attempt is running right now may be claimed a second time: harmless, a
        # destroy is idempotent and only the first to finish marks the row destroyed.
        BrokeredCredential.objects.filter(pk__in=ids, next_attempt_at__gt=now).update(
            next_attempt_at=now
        )
        credentials_destroy_enqueue(credential_ids=ids)


def credentials_sweep(*, limit: int = 500, inline: bool = False) -> int:
    """Abandoned creations (a crash between tx1 and tx2: the lease ran out) become destroy
    pending; every due destroy is sent again (or run here when `inline`). Returns how many
    destroys it sent or ran."""
    now = timezone.now()
    stale = list(
        BrokeredCredential.objects.filter(state=State.PROVISIONING, next_attempt_at__lte=now)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    for credential_id in stale:
        with transaction.atomic():
            credential = (
                BrokeredCredential.objects.select_for_update()
                .select_related("grant")
                .filter(pk=credential_id, state=State.PROVISIONING, next_attempt_at__lte=now)
                .first()
            )
            if credential is None:
                continue
            credential.state = State.DESTROY_PENDING
            credential.end_requested_at = now
            credential.next_attempt_at = None
            credential.save(update_fields=["state", "end_requested_at", "next_attempt_at"])
            record(
                actor=Actor.system("brokers"),
                verb="credential.abandoned",
                agent_id=credential.grant.agent_id,
                grant_id=credential.grant_id,
                data=_evidence(credential),
            )
    # Run inline (the management command), everything due now. Sent to the workers, only what
    # a message should already have reached: a row is resent once it has waited a whole sweep
    # interval past the moment its task (sent on commit, or Celery's retry) was due, so a
    # worker that is merely behind is not handed duplicates that multiply its backlog.
    overdue = now if inline else now - timedelta(seconds=settings.CUSTODY_BROKER_SWEEP_SECONDS)
    due = list(
        BrokeredCredential.objects.filter(state=State.DESTROY_PENDING)
        .filter(
            Q(next_attempt_at__isnull=True, end_requested_at__lte=overdue)
            | Q(next_attempt_at__lte=overdue)
        )
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    if inline:
        for credential_id in due:
            credential_destroy(credential_id=credential_id)
    else:
        credentials_destroy_enqueue(credential_ids=due)
    return len(due)


def privilege_broker_save(*, privilege_broker: PrivilegeBroker, actor: Actor) -> PrivilegeBroker:
    """An admin's change of a privilege's broker: validated by the broker, then evidence."""
    privilege_broker.config = get_broker(privilege_broker.kind).validate_config(
        privilege_broker.config
    )
    created = privilege_broker.pk is None
    with transaction.atomic():
        privilege_broker.save()
        record(
            actor=actor,
            verb="broker.configured",
            data={
                "privilege": privilege_broker.privilege.name,
                "kind": privilege_broker.kind,
                "config": privilege_broker.config,
                "enabled": privilege_broker.enabled,
                "created": created,
            },
        )
    return privilege_broker


def broker_state_summary() -> list[dict]:
    """Per kind and target: credentials live, revocations pending, failing (retried)."""
    rows = (
        BrokeredCredential.objects.filter(
            state__in=[State.LIVE, State.DESTROY_PENDING, State.PROVISIONING]
        )
        .values("kind", "target")
        .annotate(
            live=Count("pk", filter=Q(state=State.LIVE)),
            pending=Count("pk", filter=Q(state=State.DESTROY_PENDING)),
            failing=Count("pk", filter=Q(state=State.DESTROY_PENDING) & ~Q(last_error="")),
            provisioning=Count("pk", filter=Q(state=State.PROVISIONING)),
        )
        .order_by("kind", "target")
    )
    return list(rows)
