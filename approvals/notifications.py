"""The seam between request/grant state changes and the people who hear of them (Slack today).

Services call these inside their transaction; each hands a task, by name, to the notifications
queue once the transaction commits (`transaction.on_commit`), so slow or failing delivery can
never hold a lock or undo a decision. Nothing here imports from `approvals`: the tasks are
found by name. The web inbox needs nothing here: it reads state directly.
"""

import logging

from celery import current_app
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)


def slack_enabled() -> bool:
    """Slack is configured: a bot token to post with and a signing secret to check callbacks."""
    return bool(settings.SLACK_BOT_TOKEN and settings.SLACK_SIGNING_SECRET)


def _send(task_name: str, *args) -> None:
    """Hand a notification to the notifications queue; a broker outage never fails the caller
    (the decision is already committed; the web inbox shows it either way)."""
    if not slack_enabled():
        return
    try:
        current_app.send_task(task_name, args=list(args))
    except Exception:
        logger.exception("Could not enqueue %s%s", task_name, args)


def _send_on_commit(task_name: str, *args) -> None:
    transaction.on_commit(lambda: _send(task_name, *args))


def request_pending(access_request_id: int) -> None:
    """A request now waits for people: each approver with a Slack id hears of it."""
    _send_on_commit("approvals.tasks.notify_request_pending", access_request_id)


def request_updated(access_request_id: int) -> None:
    """An approval arrived but more are needed: messages show the new count."""
    _send_on_commit("approvals.tasks.notify_request_changed", access_request_id)


def request_finished(access_request_id: int) -> None:
    """Approved, denied, expired or cancelled: every message about it shows its final state."""
    _send_on_commit("approvals.tasks.notify_request_changed", access_request_id)


def grant_expiring(grant_id: int) -> None:
    """A long grant ends within CUSTODY_EXPIRY_NOTICE_SECONDS: its sponsor and team hear of it."""
    _send_on_commit("approvals.tasks.notify_grant_expiring", grant_id)


def request_escalated(access_request_id: int) -> None:
    """A request reached its escalation point: the team and backup approvers hear of it."""
    _send_on_commit("approvals.tasks.notify_request_escalated", access_request_id)


def grants_ended(access_request_ids: list[int]) -> None:
    """Grants ended (expired, completed, revoked, cascaded): their messages say so."""
    for access_request_id in access_request_ids:
        _send_on_commit("approvals.tasks.notify_request_changed", access_request_id)


def agent_flagged(agent_id: int, flag: str) -> None:
    """An agent was orphaned (its team and backups hear) or went dormant (its sponsor hears)."""
    _send_on_commit("approvals.tasks.notify_agent_flagged", agent_id, flag)


def grant_drifted(drift_flag_id: int) -> None:
    """A grant's tool call drifted: its sponsor hears, once the transaction commits."""
    _send_on_commit("approvals.tasks.notify_grant_drifted", drift_flag_id)


def review_notice(review_id: int, kind: str) -> None:
    """A review opened ("due": its sponsor hears) or escalated ("escalated": its team hears)."""
    _send_on_commit("approvals.tasks.notify_review", review_id, kind)


def eligibility_request_pending(eligibility_request_id: int) -> None:
    """An agent asked to become eligible: each person who may decide it hears, with buttons."""
    _send_on_commit("approvals.tasks.notify_eligibility_request_pending", eligibility_request_id)


def eligibility_request_finished(eligibility_request_id: int) -> None:
    """Approved or denied anywhere: every message about it shows its final state."""
    _send_on_commit("approvals.tasks.notify_eligibility_request_changed", eligibility_request_id)
