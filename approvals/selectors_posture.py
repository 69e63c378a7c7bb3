"""Posture at a glance: aggregates over every agent, request and grant for the security team's
dashboard. Each function is one query whatever the number of rows (the page's query count is
fixed, tests/frontend/test_posture.py); callers decide who may see them (the whole estate)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from agents.models import Agent
from approvals.models import AccessRequest, DriftFlag, Grant, Risk
from core.aggregates import MedianSecondsBetween

PERIOD_DAYS = 30
TOP_REQUESTERS = 5


@dataclass(frozen=True)
class AgentCounts:
    by_status: dict[str, int]
    orphaned: int
    dormant: int
    review_overdue: int


def posture_agent_counts(*, today: date) -> AgentCounts:
    """Agents by status, and the live ones orphaned, dormant or overdue for review: one query."""
    live = ~Q(status=Agent.Status.RETIRED)
    counts = Agent.objects.aggregate(
        **{
            f"status_{status}": Count("pk", filter=Q(status=status))
            for status in Agent.Status.values
        },
        orphaned=Count("pk", filter=live & Q(orphaned_at__isnull=False)),
        dormant=Count("pk", filter=live & Q(dormant_at__isnull=False)),
        review_overdue=Count("pk", filter=Q(status=Agent.Status.ACTIVE, review_due__lt=today)),
    )
    return AgentCounts(
        by_status={status: counts[f"status_{status}"] for status in Agent.Status.values},
        orphaned=counts["orphaned"],
        dormant=counts["dormant"],
        review_overdue=counts["review_overdue"],
    )


def posture_grants_by_day(*, now: datetime, days: int = PERIOD_DAYS) -> list[dict]:
    """Grants issued per day and risk over the last `days` days (today included), oldest day
    first; days without grants are there with zeros: one query."""
    today = timezone.localdate(now)
    first = today - timedelta(days=days - 1)
    # From the first day's midnight (the current time zone, as TruncDate counts days): a plain
    # range, which the `grant_issued` index answers (`issued_at__date` would scan every grant).
    since = timezone.make_aware(datetime.combine(first, time.min))
    rows = (
        Grant.objects.filter(issued_at__gte=since)
        .annotate(day=TruncDate("issued_at"))
        .values("day", "privilege__risk")
        .annotate(issued=Count("pk"))
        .order_by()
    )
    per_day = {first + timedelta(days=n): dict.fromkeys(Risk.values, 0) for n in range(days)}
    for row in rows:
        if row["day"] in per_day:
            per_day[row["day"]][row["privilege__risk"]] += row["issued"]
    return [{"day": day, "by_risk": by_risk} for day, by_risk in per_day.items()]


def posture_outcomes(*, now: datetime, days: int = PERIOD_DAYS) -> dict[str, int]:
    """What policy answered for the requests submitted in the period, by outcome: one query."""
    rows = (
        AccessRequest.objects.filter(created_at__gte=now - timedelta(days=days))
        .values("policy_outcome")
        .annotate(requests=Count("pk"))
        .order_by()
    )
    outcomes = dict.fromkeys(AccessRequest.Outcome.values, 0)
    for row in rows:
        outcomes[row["policy_outcome"]] = row["requests"]
    return outcomes


def posture_median_decision_seconds(*, now: datetime, days: int = PERIOD_DAYS) -> float | None:
    """The median time people took to decide the requests policy routed to them, over those
    decided in the period (approved or denied; expiries are no decision); None without any."""
    # In the database (percentile_cont on PostgreSQL): one row comes back, not every wait.
    return AccessRequest.objects.filter(
        policy_outcome=AccessRequest.Outcome.REQUEST,
        status__in=[AccessRequest.Status.APPROVED, AccessRequest.Status.DENIED],
        decided_at__gte=now - timedelta(days=days),
    ).aggregate(median=MedianSecondsBetween("created_at", "decided_at"))["median"]


def posture_top_requesters(
    *, now: datetime, days: int = PERIOD_DAYS, limit: int = TOP_REQUESTERS
) -> list[dict]:
    """The agents that asked most in the period: id, name, requests; one query."""
    return list(
        AccessRequest.objects.filter(created_at__gte=now - timedelta(days=days))
        .values("agent_id", "agent__name")
        .annotate(requests=Count("pk"))
        .order_by("-requests", "agent__name")[:limit]
    )


def posture_drift(*, now: datetime, days: int = PERIOD_DAYS) -> dict[str, int]:
    """Drift flags in the period: how many, how many ended their grant, and on how many grants."""
    return DriftFlag.objects.filter(created_at__gte=now - timedelta(days=days)).aggregate(
        flags=Count("pk"),
        ended=Count("pk", filter=Q(outcome=DriftFlag.Outcome.END)),
        grants=Count("grant", distinct=True),
    )
