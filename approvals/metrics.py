"""Requests, grants, decisions and the task queues as Prometheus metrics.

The gauges are database (and broker) facts computed at scrape time, each one query on a partial
index (pending requests, live grants) so a scrape stays cheap however long the history grows."""

from __future__ import annotations

import logging

from django.db.models import Count, Min
from django.db.models.signals import post_save
from django.db.transaction import on_commit
from django.dispatch import receiver
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from approvals.models import AccessRequest, Decision, Grant, Risk
from core.metrics import DECISIONS

logger = logging.getLogger(__name__)

# The queues Custody's tasks are routed to (settings.CELERY_TASK_ROUTES and the default).
QUEUES = ("expiry", "sweeps", "notifications")


@receiver(post_save, sender=Decision, dispatch_uid="custody-metrics-decisions")
def count_decision(sender, instance: Decision, created: bool, **kwargs):
    if created:  # counted once its transaction commits: a rolled-back decision never happened
        channel, verdict = instance.channel, instance.verdict
        on_commit(lambda: DECISIONS.labels(channel=channel, verdict=verdict).inc())


def _queue_depths() -> dict[str, int] | None:
    from celery import current_app

    try:
        with current_app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            channel = connection.default_channel
            # kombu's virtual transports (Redis, filesystem) count a queue with `_size`, Redis
            # summing its priority lists; a passive declare would refuse an empty Redis queue.
            return {queue: int(channel._size(queue)) for queue in QUEUES}
    except Exception as exc:  # noqa: BLE001 - a broken broker must not break the scrape
        logger.warning("metrics: the broker's queue depths cannot be read: %r", exc)
        return None


def collect_approval_facts():
    now = timezone.now()
    pending = GaugeMetricFamily(
        "custody_pending_requests", "Access requests waiting for people, by risk.", labels=["risk"]
    )
    by_risk = dict(
        AccessRequest.objects.filter(status=AccessRequest.Status.PENDING)
        .values_list("privilege__risk")
        .annotate(count=Count("pk"))
        .values_list("privilege__risk", "count")
    )
    for risk in Risk.values:
        pending.add_metric([risk], by_risk.get(risk, 0))
    yield pending

    live = GaugeMetricFamily("custody_live_grants", "Grants in force (not ended, not past time).")
    live.add_metric([], Grant.objects.live(now).count())
    yield live

    due = Grant.objects.due(now).aggregate(count=Count("pk"), oldest=Min("expires_at"))
    lagging = GaugeMetricFamily(
        "custody_grants_past_expiry",
        "Grants past expires_at that the expiry jobs have not ended yet (never honored meanwhile).",
    )
    lagging.add_metric([], due["count"])
    yield lagging
    lag = GaugeMetricFamily(
        "custody_expiry_lag_seconds",
        "How long the oldest grant past expires_at has waited to be ended (0 when none waits).",
    )
    lag.add_metric([], (now - due["oldest"]).total_seconds() if due["oldest"] else 0)
    yield lag

    depths = _queue_depths()
    broker_up = GaugeMetricFamily(
        "custody_broker_up", "1 when the Celery broker answered this scrape, else 0."
    )
    broker_up.add_metric([], 0 if depths is None else 1)
    yield broker_up
    depth = GaugeMetricFamily(
        "custody_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"]
    )
    for queue, count in (depths or {}).items():
        depth.add_metric([queue], count)
    yield depth
