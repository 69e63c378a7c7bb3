"""The evidence log's health as Prometheus gauges, read from the database at scrape time."""

from __future__ import annotations

from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from audit.models import AuditChainHead, AuditCheckpoint, ChainCheck


def collect_audit_facts():
    now = timezone.now()
    check = ChainCheck.objects.filter(state=ChainCheck.State.DONE).order_by("-checked_at").first()
    status = GaugeMetricFamily(
        "custody_audit_chain_ok",
        "1 when the latest walk of the audit chain verified, 0 when it found a break, "
        "absent before the first walk.",
    )
    verified = GaugeMetricFamily(
        "custody_audit_chain_last_verified_sequence",
        "The last sequence the latest walk of the audit chain verified (an incremental walk "
        "trusts the signed checkpoint it started from and walks on from there).",
    )
    check_age = GaugeMetricFamily(
        "custody_audit_chain_check_age_seconds", "Seconds since the audit chain was last walked."
    )
    if check is not None:
        status.add_metric([], 1 if check.ok else 0)
        verified.add_metric([], check.started_after + check.verified)
        check_age.add_metric([], (now - check.checked_at).total_seconds())
    head = GaugeMetricFamily(
        "custody_audit_head_sequence", "The sequence number of the newest audit event."
    )
    head.add_metric([], AuditChainHead.objects.values_list("last_sequence", flat=True).first() or 0)
    checkpoint = AuditCheckpoint.objects.order_by("-sequence").only("signed_at").first()
    checkpoint_age = GaugeMetricFamily(
        "custody_audit_checkpoint_age_seconds",
        "Seconds since the newest signed audit checkpoint was published, absent before the first.",
    )
    if checkpoint is not None:
        checkpoint_age.add_metric([], (now - checkpoint.signed_at).total_seconds())
    yield from (status, verified, check_age, head, checkpoint_age)
