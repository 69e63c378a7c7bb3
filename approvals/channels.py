"""The seam between request/grant state changes and the places people and workers hear of them.

Services call these after commit (`transaction.on_commit`), never inside a transaction, so slow
or failing delivery can never hold a lock or undo a decision. The web inbox needs nothing here:
it reads state directly.
"""

import logging

logger = logging.getLogger(__name__)


def _send(task, *args) -> None:
    """Hand a notification to the notifications queue; a broker outage never fails the caller
    (the decision is already committed; the web inbox shows it either way)."""
    from approvals import slack

    if not slack.enabled():
        return
    try:
        task.delay(*args)
    except Exception:
        logger.exception("Could not enqueue %s%s", task.name, args)


def request_pending(access_request_id: int) -> None:
    """A request now waits for people: each approver with a Slack id hears of it."""
    from approvals.tasks import notify_request_pending

    _send(notify_request_pending, access_request_id)


def request_updated(access_request_id: int) -> None:
    """An approval arrived but more are needed: messages show the new count."""
    from approvals.tasks import notify_request_changed

    _send(notify_request_changed, access_request_id)


def request_finished(access_request_id: int) -> None:
    """Approved, denied, expired or cancelled: every message about it shows its final state."""
    from approvals.tasks import notify_request_changed

    _send(notify_request_changed, access_request_id)


def grant_issued(grant_id: int, expires_at) -> None:
    """A grant is in force: its expiry task goes to the broker if due within the horizon."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from approvals.tasks import enqueue_expiry

    horizon = timezone.now() + timedelta(seconds=settings.CUSTODY_ETA_HORIZON_SECONDS)
    if expires_at <= horizon:
        enqueue_expiry(grant_id, expires_at)


def grant_expiring(grant_id: int) -> None:
    """A long grant ends in ten minutes: its sponsor and team hear of it."""
    from approvals.tasks import notify_grant_expiring

    _send(notify_grant_expiring, grant_id)


def request_escalated(access_request_id: int) -> None:
    """A request reached its escalation point: the team and backup approvers hear of it."""
    from approvals.tasks import notify_request_escalated

    _send(notify_request_escalated, access_request_id)


def grants_ended(access_request_ids: list[int]) -> None:
    """Grants ended (expired, completed, revoked, cascaded): their messages say so."""
    from approvals.tasks import notify_request_changed

    for access_request_id in access_request_ids:
        _send(notify_request_changed, access_request_id)
