from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet

from audit.models import HASHED_FIELDS, AuditCheckpoint, AuditEvent, ChainCheck


def audit_event_list(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    agent_id: int | None = None,
    actor_type: str | None = None,
    actor_id: str | None = None,
    verb: str | None = None,
    access_request_id: int | None = None,
    grant_id: int | None = None,
) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.all()
    if since is not None:
        events = events.filter(occurred_at__gte=since)
        if (after := _sequence_before(since)) is not None:
            events = events.filter(sequence__gt=after)
    if until is not None:
        events = events.filter(occurred_at__lt=until)
        if (bound := _sequence_from(until)) is not None:
            events = events.filter(sequence__lt=bound)
    if agent_id is not None:
        events = events.filter(agent_id=agent_id)
    if actor_type:
        events = events.filter(actor_type=actor_type)
    if actor_id:
        events = events.filter(actor_id=actor_id)
    if verb and verb.endswith(".*"):  # a family: grant.* is grant.issued, grant.revoked, …
        events = events.filter(verb__startswith=verb[:-1])
    elif verb:
        events = events.filter(verb=verb)
    if access_request_id is not None:
        events = events.filter(access_request_id=access_request_id)
    if grant_id is not None:
        events = events.filter(grant_id=grant_id)
    return events.order_by("sequence")


def _skew() -> timedelta:
    return timedelta(seconds=settings.CUSTODY_AUDIT_CLOCK_SKEW_SECONDS)


def _sequence_before(moment: datetime) -> int | None:
    """A sequence every event at or after `moment` comes after. An event's time is taken under
    the chain-head lock, so times rise with sequences up to the app servers' clock skew: the
    last event more than that margin before `moment` bounds them. Without the bound, a range
    months back makes PostgreSQL walk the sequence index from the head (seconds at 10M)."""
    return (
        AuditEvent.objects.filter(occurred_at__lt=moment - _skew())
        .order_by("-occurred_at")
        .values_list("sequence", flat=True)
        .first()
    )


def _sequence_from(moment: datetime) -> int | None:
    """A sequence every event before `moment` comes before (the same margin, the other way)."""
    return (
        AuditEvent.objects.filter(occurred_at__gte=moment + _skew())
        .order_by("occurred_at")
        .values_list("sequence", flat=True)
        .first()
    )


def audit_trail_of_request(*, access_request_id: int, grant_id: int | None) -> QuerySet[AuditEvent]:
    """What happened to one request and, once issued, to its grant, in order."""
    about = Q(access_request_id=access_request_id)
    if grant_id is not None:
        about |= Q(grant_id=grant_id)
    return AuditEvent.objects.filter(about).order_by("sequence")


def chain_check_latest() -> ChainCheck | None:
    return ChainCheck.objects.first()


def chain_check_last_finished() -> ChainCheck | None:
    """The newest walk that finished (its result is what the page and the metrics show)."""
    return ChainCheck.objects.filter(state=ChainCheck.State.DONE).first()


def chain_check_running() -> ChainCheck | None:
    return ChainCheck.objects.filter(state=ChainCheck.State.RUNNING).first()


# An export carries every field the hash covers, and the hash: enough to verify it offline.
EXPORT_FIELDS = [*HASHED_FIELDS, "hash"]


def audit_event_as_dict(event: AuditEvent) -> dict:
    row = {name: getattr(event, name) for name in EXPORT_FIELDS}
    row["occurred_at"] = event.occurred_at.isoformat(timespec="microseconds")
    return row


def audit_checkpoint_latest() -> dict | None:
    """The database's copy of the newest checkpoint (its signature is what a reader trusts)."""
    copy = AuditCheckpoint.objects.order_by("-sequence").first()
    return copy.document if copy else None
