"""Celery tasks: thin, idempotent callers of the services. They take ids and re-check state.

Three layers end every grant on time (DESIGN.md, "Time"): `expire_grant` runs at the grant's
expiry (ETA), `sweep_expired_grants` catches whatever an ETA task missed, and every check in the
services treats a grant past its time as ended whatever these jobs did.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import F
from django.utils import timezone
from slack_sdk.errors import SlackApiError, SlackClientError

from approvals import services, slack
from approvals.models import AccessRequest, Grant, SlackMessage
from approvals.services import reviews

logger = logging.getLogger(__name__)

SWEEP_BATCH = 200
# A sweep stops starting new batches after this share of its interval, so runs never pile up.
SWEEP_BUDGET_SHARE = 0.8
SWEEP_RETRY_SECONDS = 0.5
# Grants the periodic enqueuer claims per transaction (one UPDATE), then sends.
ENQUEUE_BATCH = 1000


@shared_task(bind=True, max_retries=None, acks_late=True)
def expire_grant(self, grant_id: int) -> bool:
    grant = Grant.objects.filter(pk=grant_id).values("revoked_at", "expires_at").first()
    if grant is None or grant["revoked_at"] is not None:
        return False
    early = (grant["expires_at"] - timezone.now()).total_seconds()
    if early > 0:  # clock skew between hosts, or a message delivered early: try again at time
        raise self.retry(countdown=early, max_retries=5)
    # Its own grant, and after a backlog everything already due, in one transaction; later ETA
    # tasks then find their grant ended and cost one read.
    return services.grants_expire_due(limit=SWEEP_BATCH, including=grant_id) > 0


def enqueue_expiry(grant_id: int, expires_at) -> bool:
    """Claim the grant's expiry task (once) and hand it to the broker with its ETA."""
    return services.grant_expiry_enqueue(grant_id=grant_id, expires_at=expires_at)


@shared_task(acks_late=True)
def enqueue_upcoming_expiries() -> int:
    """Grants that come within the ETA horizon get their expiry task now: batch after batch
    until none is left or the run's budget (a share of its interval) is spent, so however many
    come into range at once (10^5 after a beat outage) they are all enqueued before they are due.
    """
    started = time.monotonic()
    budget = settings.CELERY_BEAT_SCHEDULE["enqueue-upcoming-expiries"]["schedule"]
    horizon = timezone.now() + timedelta(seconds=settings.CUSTODY_ETA_HORIZON_SECONDS)
    enqueued = 0
    while time.monotonic() - started < budget * SWEEP_BUDGET_SHARE:
        sent = services.grants_expiry_enqueue_upcoming(horizon=horizon, limit=ENQUEUE_BATCH)
        enqueued += sent
        if sent < ENQUEUE_BATCH:
            break
    if enqueued:
        logger.info("enqueued the expiry of %s grant(s) coming within the horizon", enqueued)
    return enqueued


def _budget_left(started) -> bool:
    budget = settings.CUSTODY_SWEEP_SECONDS * SWEEP_BUDGET_SHARE
    return (timezone.now() - started).total_seconds() < budget


@shared_task(acks_late=True)
def sweep_expired_grants() -> int:
    """One indexed query per batch (partial index grant_live_expiry); the same idempotent service
    ends each grant, so a rerun or a concurrent ETA task changes nothing twice."""
    started = timezone.now()
    ended = 0
    while _budget_left(started):
        try:
            batch = services.grants_expire_due(limit=SWEEP_BATCH)
        except (OperationalError, InterfaceError) as exc:
            # A deadlock, or the database restarting: waiting for the next sweep would leave
            # due grants live for two intervals. Try again (a fresh connection) within budget.
            logger.warning("sweep: %r; trying again", exc)
            connection.close_if_unusable_or_obsolete()
            time.sleep(SWEEP_RETRY_SECONDS)
            continue
        ended += batch
        if not batch:
            break
    if ended:
        logger.info("sweep ended %s grant(s) past their expiry", ended)
    return ended


@shared_task(acks_late=True)
def sweep_request_deadlines() -> dict:
    """Expire requests past their deadline, escalate silent ones, warn of grants ending soon."""
    now = timezone.now()
    pending = AccessRequest.objects.filter(status=AccessRequest.Status.PENDING)
    expired = sum(
        services.access_request_expire(access_request_id=pk)
        for pk in pending.filter(decision_deadline__lte=now)
        .order_by("decision_deadline")
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    escalated = sum(
        services.access_request_escalate(access_request_id=pk)
        for pk in pending.filter(
            escalated_at__isnull=True, escalation_at__lte=now, decision_deadline__gt=now
        )
        .order_by("escalation_at")
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    notice = timedelta(seconds=settings.CUSTODY_EXPIRY_NOTICE_SECONDS)
    long_grant = timedelta(seconds=settings.CUSTODY_EXPIRY_NOTICE_MIN_GRANT_SECONDS)
    noticed = sum(
        services.grant_expiry_notice(grant_id=pk)
        for pk in Grant.objects.live(now)
        .filter(
            expiry_notice_sent_at__isnull=True,
            expires_at__lte=now + notice,
            expires_at__gte=F("issued_at") + long_grant,
        )
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    )
    return {"expired": expired, "escalated": escalated, "expiry_notices": noticed}


# --- notifications (Slack), on their own queue so a backlog never delays an expiry ------------

NOTIFY_MAX_RETRIES = 50  # with backoff capped at 5 minutes: hours of Slack outage are covered
NOTIFY_MAX_BACKOFF = 300


def _retry_later(task, exc: Exception):
    response = getattr(exc, "response", None)
    if isinstance(exc, SlackApiError) and response is not None and response.status_code == 429:
        countdown = int(response.headers.get("Retry-After", response.headers.get("retry-after", 1)))
    else:
        countdown = min(2**task.request.retries, NOTIFY_MAX_BACKOFF)
    logger.warning("Slack call failed (%s); retrying in %s s", exc, countdown)
    raise task.retry(exc=exc, countdown=countdown)


def _notify(task, send, *args):
    if not slack.enabled():
        return 0
    try:
        return send(*args)
    except slack.NoticeInFlight as exc:
        # Another run is posting this notice: look again once its claim would have lapsed.
        raise task.retry(exc=exc, countdown=int(slack.NOTICE_CLAIM_LEASE.total_seconds()))
    except (SlackClientError, OSError) as exc:
        _retry_later(task, exc)


@shared_task(bind=True, max_retries=NOTIFY_MAX_RETRIES, acks_late=True)
def notify_request_pending(self, access_request_id: int):
    return _notify(self, slack.post_request, access_request_id)


@shared_task(bind=True, max_retries=NOTIFY_MAX_RETRIES, acks_late=True)
def notify_request_changed(self, access_request_id: int):
    return _notify(self, slack.update_request, access_request_id)


@shared_task(bind=True, max_retries=NOTIFY_MAX_RETRIES, acks_late=True)
def notify_request_escalated(self, access_request_id: int):
    return _notify(
        self,
        lambda pk: slack.post_request(pk, kind=SlackMessage.Kind.ESCALATION),
        access_request_id,
    )


@shared_task(bind=True, max_retries=NOTIFY_MAX_RETRIES, acks_late=True)
def notify_grant_expiring(self, grant_id: int):
    return _notify(self, slack.post_expiry_notice, grant_id)


@shared_task(bind=True, max_retries=5, acks_late=True)
def notify_ephemeral(self, channel: str, user: str, text: str):
    return _notify(self, slack.post_ephemeral, channel, user, text)


@shared_task(bind=True, max_retries=NOTIFY_MAX_RETRIES, acks_late=True)
def notify_agent_flagged(self, agent_id: int, flag: str):
    return _notify(self, slack.post_agent_notice, agent_id, flag)


@shared_task(bind=True, max_retries=NOTIFY_MAX_RETRIES, acks_late=True)
def notify_grant_drifted(self, drift_flag_id: int):
    return _notify(self, slack.post_drift_notice, drift_flag_id)


@shared_task(bind=True, max_retries=NOTIFY_MAX_RETRIES, acks_late=True)
def notify_review(self, review_id: int, kind: str):
    return _notify(self, slack.post_review_notice, review_id, kind)


@shared_task(bind=True, max_retries=NOTIFY_MAX_RETRIES, acks_late=True)
def notify_eligibility_request_pending(self, eligibility_request_id: int):
    return _notify(self, slack.post_eligibility_request, eligibility_request_id)


@shared_task(bind=True, max_retries=NOTIFY_MAX_RETRIES, acks_late=True)
def notify_eligibility_request_changed(self, eligibility_request_id: int):
    return _notify(self, slack.update_eligibility_request, eligibility_request_id)


@shared_task(acks_late=True)
def sweep_reviews() -> dict:
    """Open the reviews that are due; escalate and expire the ones left unanswered."""
    return reviews.reviews_sweep()
