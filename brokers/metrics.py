"""Brokered credentials as Prometheus gauges, computed at scrape time (database facts): live
credentials, destructions pending and failing, and how long the oldest has waited."""

from __future__ import annotations

from django.db.models import Count, Min, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from brokers.models import BrokeredCredential
from core.metrics import register_facts

State = BrokeredCredential.State


def collect_broker_facts():
    now = timezone.now()
    rows = (
        BrokeredCredential.objects.filter(state__in=[State.LIVE, State.DESTROY_PENDING])
        .values("kind", "target")
        .annotate(
            live=Count("pk", filter=Q(state=State.LIVE)),
            pending=Count("pk", filter=Q(state=State.DESTROY_PENDING)),
            failing=Count("pk", filter=Q(state=State.DESTROY_PENDING) & ~Q(last_error="")),
        )
        .order_by("kind", "target")
    )
    labels = ["kind", "target"]
    live = GaugeMetricFamily(
        "custody_brokered_credentials_live",
        "Brokered credentials delivered and live.",
        labels=labels,
    )
    pending = GaugeMetricFamily(
        "custody_brokered_revocations_pending",
        "Brokered credentials of ended grants not yet confirmed destroyed.",
        labels=labels,
    )
    failing = GaugeMetricFamily(
        "custody_brokered_revocations_failing",
        "Pending destructions whose last attempt failed (the target down or refusing).",
        labels=labels,
    )
    for row in rows:
        key = [row["kind"], row["target"]]
        live.add_metric(key, row["live"])
        pending.add_metric(key, row["pending"])
        failing.add_metric(key, row["failing"])
    # One sample always (0 when nothing waits), so the alert rule has a series to watch.
    oldest = BrokeredCredential.objects.filter(state=State.DESTROY_PENDING).aggregate(
        oldest=Min("end_requested_at")
    )["oldest"]
    age = GaugeMetricFamily(
        "custody_brokered_revocation_oldest_seconds",
        "How long the oldest pending destruction of a brokered credential has waited since its "
        "grant ended (0 when none waits).",
    )
    age.add_metric([], max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)
    yield from (live, pending, failing, age)


register_facts(collect_broker_facts)
