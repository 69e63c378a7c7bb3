"""When an agent is next reviewed: the highest risk it is eligible for sets the cadence
(CUSTODY_REVIEW_DAYS_CRITICAL / _HIGH / _OTHER), counted from its last completed review, else its
registration. Called by the eligibility services and by review completion, inside their
transaction, under the agent row lock they hold."""

from __future__ import annotations

from datetime import date, timedelta

from django.conf import settings
from django.utils import timezone

from agents.models import Agent
from approvals.models import RISK_LEVEL, Eligibility, Review, Risk
from audit.services import Actor, record


def review_cadence_days(agent: Agent) -> int:
    """Days between reviews: set by the highest risk among the eligibility in force."""
    risks = set(
        Eligibility.objects.in_force().filter(agent=agent).values_list("privilege__risk", flat=True)
    )
    highest = max((RISK_LEVEL[risk] for risk in risks), default=0)
    if highest >= RISK_LEVEL[Risk.CRITICAL]:
        return settings.CUSTODY_REVIEW_DAYS_CRITICAL
    if highest >= RISK_LEVEL[Risk.HIGH]:
        return settings.CUSTODY_REVIEW_DAYS_HIGH
    return settings.CUSTODY_REVIEW_DAYS_OTHER


def _anchor(agent: Agent) -> date:
    """The cadence counts from the last completed review, else from the registration."""
    last = (
        Review.objects.filter(agent=agent, status=Review.Status.COMPLETED)
        .order_by("-closed_at")
        .values_list("closed_at", flat=True)
        .first()
    )
    return timezone.localdate(last or agent.created_at)


def agent_review_reschedule(*, agent: Agent, actor: Actor, why: str) -> date | None:
    """Inside the caller's transaction, with the agent row locked exclusively: set `review_due`
    from the cadence. An open review keeps its date (completing it reschedules); a retired
    agent is never reviewed again. Never earlier than today: a newly riskier agent is due now."""
    if agent.status == Agent.Status.RETIRED:
        return agent.review_due
    if Review.objects.filter(agent=agent, status=Review.Status.OPEN).exists():
        return agent.review_due
    days = review_cadence_days(agent)
    due = max(_anchor(agent) + timedelta(days=days), timezone.localdate())
    if due != agent.review_due:
        previous = agent.review_due
        Agent.objects.filter(pk=agent.pk).update(review_due=due)
        agent.review_due = due
        record(
            actor=actor,
            verb="review.scheduled",
            agent_id=agent.pk,
            data={
                "from": previous.isoformat() if previous else None,
                "to": due.isoformat(),
                "cadence_days": days,
                "why": why,
            },
        )
    return due
