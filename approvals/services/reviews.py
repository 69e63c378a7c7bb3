"""Reviews (recertification): each agent's sponsor attests, on a cadence, that it is still
needed and still needs what it is eligible for (issue 13, "Reviews").

- Cadence: the highest risk the agent is eligible for sets the days between reviews
  (CUSTODY_REVIEW_DAYS_CRITICAL / _HIGH / _OTHER), counted from the last completed review (or the
  registration); rescheduled when eligibility changes and when a review completes.
- The sweep opens a review when `review_due` arrives (one open review per agent, by constraint),
  escalates it to the team halfway through CUSTODY_REVIEW_GRACE_DAYS, and expires it at the end,
  applying CUSTODY_REVIEW_OVERDUE_ACTION (default: suspend).
- Completing is one service: per eligibility keep/remove, then the verdict on the agent
  (attest / reassign / suspend / retire), through the services that own each change.

Lock order: the agent row first (`FOR NO KEY UPDATE`, `lock_agents(exclusive=True)`), then the
review row, then what the called services take (eligibility rows, requests, grants), the audit
chain head last. The sweep picks candidates without locks and re-checks each under them, so a
sweep racing a completion (or another sweep) changes nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from agents.services import agent_reassign_sponsor, agent_retire, agent_suspend
from approvals import notifications
from approvals.models import Eligibility, Review
from approvals.services.cadence import agent_review_reschedule
from approvals.services.common import lock_agents
from approvals.services.eligibility import eligibility_remove
from audit.services import Actor, deferred_evidence, record
from core.errors import Conflict, InvalidInput, NotFound

SWEEP_BATCH = 200
NOT_YOUR_REVIEW = "There is no such review for you."


# --- the sweep ---------------------------------------------------------------------------------


def review_open(*, agent_id: int, today: date | None = None) -> Review | None:
    """Open the agent's review if it is due and none is open; None when there was nothing to do."""
    today = today or timezone.localdate()
    with transaction.atomic(), deferred_evidence():
        agent = lock_agents([agent_id], exclusive=True).get(agent_id)
        if (
            agent is None
            or agent.status != Agent.Status.ACTIVE
            or agent.review_due is None
            or agent.review_due > today
            or Review.objects.filter(agent=agent, status=Review.Status.OPEN).exists()
        ):
            return None
        now = timezone.now()
        previous_end = (
            Review.objects.filter(agent=agent)
            .exclude(status=Review.Status.OPEN)
            .order_by("-period_end")
            .values_list("period_end", flat=True)
            .first()
        )
        review = Review.objects.create(
            agent=agent,
            period_start=previous_end or agent.created_at,
            period_end=now,
            due=agent.review_due,
            opened_at=now,
        )
        record(
            actor=Actor.system("reviews"),
            verb="review.opened",
            agent_id=agent.pk,
            data={
                "review_id": review.pk,
                "sponsor": agent.sponsor_name,
                "team": agent.team.name,
                "due": review.due.isoformat(),
                "period_start": review.period_start.isoformat(),
                "period_end": review.period_end.isoformat(),
                "grace_ends": review.grace_ends().isoformat(),
            },
        )
        notifications.review_notice(review.pk, "due")
    return review


def reviews_open_due(*, limit: int = SWEEP_BATCH) -> int:
    today = timezone.localdate()
    ids = list(
        Agent.objects.filter(status=Agent.Status.ACTIVE, review_due__lte=today)
        .exclude(reviews__status=Review.Status.OPEN)
        .order_by("review_due", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(review_open(agent_id=pk, today=today) is not None for pk in ids)


def reviews_escalate_due(*, limit: int = SWEEP_BATCH) -> int:
    """Halfway through the grace period an open review escalates to the agent's team, once
    (a conditional update claims it)."""
    today = timezone.localdate()
    cutoff = today - timedelta(days=settings.CUSTODY_REVIEW_GRACE_DAYS / 2)
    ids = list(
        Review.objects.filter(status=Review.Status.OPEN, escalated_at__isnull=True, due__lte=cutoff)
        .order_by("due", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    escalated = 0
    for pk in ids:
        with transaction.atomic():
            now = timezone.now()
            claimed = Review.objects.filter(
                pk=pk, status=Review.Status.OPEN, escalated_at__isnull=True
            ).update(escalated_at=now)
            if not claimed:
                continue
            review = Review.objects.select_related("agent__team", "agent__sponsor").get(pk=pk)
            record(
                actor=Actor.system("reviews"),
                verb="review.escalated",
                agent_id=review.agent_id,
                data={
                    "review_id": review.pk,
                    "sponsor": review.agent.sponsor_name,
                    "team": review.agent.team.name,
                    "due": review.due.isoformat(),
                    "grace_ends": review.grace_ends().isoformat(),
                },
            )
            notifications.review_notice(review.pk, "escalated")
            escalated += 1
    return escalated


def review_expire(*, review_id: int, today: date | None = None) -> bool:
    """At the end of the grace period: expired, and CUSTODY_REVIEW_OVERDUE_ACTION applied."""
    today = today or timezone.localdate()
    agent_id = Review.objects.filter(pk=review_id).values_list("agent_id", flat=True).first()
    if agent_id is None:
        return False
    with transaction.atomic(), deferred_evidence():
        agent = lock_agents([agent_id], exclusive=True)[agent_id]
        review = Review.objects.select_for_update(no_key=True).get(pk=review_id)
        # Re-checked under the locks: a completion may have come first.
        if review.status != Review.Status.OPEN or review.grace_ends() > today:
            return False
        action = settings.CUSTODY_REVIEW_OVERDUE_ACTION
        review.status = Review.Status.EXPIRED
        review.closed_at = timezone.now()
        review.save(update_fields=["status", "closed_at"])
        actor = Actor.system("reviews")
        record(
            actor=actor,
            verb="review.expired",
            agent_id=agent.pk,
            data={
                "review_id": review.pk,
                "sponsor": agent.sponsor_name,
                "due": review.due.isoformat(),
                "grace_days": settings.CUSTODY_REVIEW_GRACE_DAYS,
                "action": action,
            },
        )
        if action == "suspend" and agent.status == Agent.Status.ACTIVE:
            agent = agent_suspend(
                agent=agent,
                actor=actor,
                reason=(
                    f"review #{review.pk} unanswered {settings.CUSTODY_REVIEW_GRACE_DAYS} days "
                    f"after it was due"
                ),
            )
        agent_review_reschedule(agent=agent, actor=actor, why=f"review #{review.pk} expired")
    return True


def reviews_expire_due(*, limit: int = SWEEP_BATCH) -> int:
    today = timezone.localdate()
    cutoff = today - timedelta(days=settings.CUSTODY_REVIEW_GRACE_DAYS)
    ids = list(
        Review.objects.filter(status=Review.Status.OPEN, due__lte=cutoff)
        .order_by("due", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(review_expire(review_id=pk, today=today) for pk in ids)


def reviews_sweep() -> dict:
    """One pass: expire, escalate, then open what is due. Safe to run twice, or alongside
    another (each step re-checks under its lock or claims with a conditional update)."""
    return {
        "expired": reviews_expire_due(),
        "escalated": reviews_escalate_due(),
        "opened": reviews_open_due(),
    }


# --- completing a review -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewOutcome:
    review: Review
    removed: list[int]
    verdict: str


def may_complete_review(user, agent: Agent) -> bool:
    """The agent's sponsor, or an admin (superuser); always an active person."""
    if not (getattr(user, "is_authenticated", False) and user.is_active):
        return False
    return user.is_superuser or agent.sponsor_id == user.pk


def _decisions_refusal(decisions: dict, eligibility_ids: set[int]) -> InvalidInput | None:
    unknown = set(decisions) - eligibility_ids
    if unknown:
        return InvalidInput(
            "Some decisions name an eligibility this agent does not hold; reload the review.",
            code="unknown_eligibility",
        )
    missing = eligibility_ids - set(decisions)
    if missing:
        return InvalidInput(
            "Decide keep or remove for every eligibility the agent holds.",
            code="decision_missing",
        )
    if any(choice not in ("keep", "remove") for choice in decisions.values()):
        return InvalidInput("Each eligibility is either kept or removed.", code="invalid_decision")
    return None


def review_complete(
    *,
    review_id: int,
    by,
    decisions: dict[int, str],
    verdict: str,
    comment: str = "",
    new_sponsor_id: int | None = None,
) -> ReviewOutcome:
    """Complete an open review once: remove what the sponsor chose to remove, then apply the
    verdict (attest, reassign to `new_sponsor_id`, suspend, retire), and schedule the next one.
    Anyone but the agent's sponsor or an admin is told there is no such review (404)."""
    agent_id = Review.objects.filter(pk=review_id).values_list("agent_id", flat=True).first()
    if agent_id is None:
        raise NotFound(NOT_YOUR_REVIEW)
    if verdict not in Review.Verdict.values:
        raise InvalidInput(
            "Choose attest, reassign, suspend or retire for the agent.", code="invalid_verdict"
        )
    comment = (comment or "").strip()[:2000]
    new_sponsor = None
    if verdict == Review.Verdict.REASSIGN:
        new_sponsor = (
            get_user_model().objects.filter(pk=new_sponsor_id, is_active=True).first()
            if new_sponsor_id
            else None
        )
        if new_sponsor is None:
            raise InvalidInput(
                "Reassigning needs the active person who becomes the agent's sponsor.",
                code="new_sponsor_missing",
            )
    actor = Actor.for_user(by)
    with transaction.atomic(), deferred_evidence():
        agent = lock_agents([agent_id], exclusive=True)[agent_id]
        if not may_complete_review(by, agent):
            raise NotFound(NOT_YOUR_REVIEW)
        review = Review.objects.select_for_update(no_key=True).get(pk=review_id)
        if review.status != Review.Status.OPEN:
            raise Conflict(
                f"This review of {agent.name} is already {review.status}.",
                code="review_closed",
            )
        if new_sponsor is not None and new_sponsor.pk == agent.sponsor_id:
            raise InvalidInput(
                f"{new_sponsor.get_username()} already sponsors {agent.name}.",
                code="same_sponsor",
            )
        held = {
            eligibility.pk: eligibility
            for eligibility in Eligibility.objects.in_force()
            .filter(agent=agent)
            .select_related("privilege")
        }
        refusal = _decisions_refusal(decisions, set(held))
        if refusal is not None:
            raise refusal
        removed = sorted(pk for pk, choice in decisions.items() if choice == "remove")
        for pk in removed:
            eligibility_remove(
                eligibility_id=pk, agent=agent, by=by, reason=f"review #{review.pk}: removed"
            )
        now = timezone.now()
        review.status = Review.Status.COMPLETED
        review.closed_at = now
        review.reviewer = by
        review.decisions = {str(pk): choice for pk, choice in sorted(decisions.items())}
        review.verdict = verdict
        review.comment = comment
        review.save(
            update_fields=["status", "closed_at", "reviewer", "decisions", "verdict", "comment"]
        )
        record(
            actor=actor,
            verb="review.completed",
            agent_id=agent.pk,
            data={
                "review_id": review.pk,
                "verdict": verdict,
                "kept": [names_of(held, pk) for pk, c in sorted(decisions.items()) if c == "keep"],
                "removed": [names_of(held, pk) for pk in removed],
                "comment": comment,
                **({"new_sponsor": new_sponsor.get_username()} if new_sponsor else {}),
                "due": review.due.isoformat(),
                "late": review.due < timezone.localdate(now),
            },
        )
        reason = f"review #{review.pk}: {verdict} by {by.get_username()}"
        if verdict == Review.Verdict.SUSPEND:
            agent = agent_suspend(agent=agent, actor=actor, reason=reason)
        elif verdict == Review.Verdict.RETIRE:
            agent = agent_retire(agent=agent, actor=actor, reason=reason)
        elif verdict == Review.Verdict.REASSIGN:
            agent = agent_reassign_sponsor(agent=agent, sponsor=new_sponsor, actor=actor)
        agent_review_reschedule(agent=agent, actor=actor, why=f"review #{review.pk} completed")
    return ReviewOutcome(review=review, removed=removed, verdict=verdict)


def names_of(held: dict[int, Eligibility], pk: int) -> dict:
    return {"eligibility_id": pk, "privilege": held[pk].privilege.name}
