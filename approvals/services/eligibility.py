"""Eligibility: what an agent may ask for at all (PIM's eligible assignments). The sponsor, a
person who manages the agent, or an admin makes an agent eligible for a catalogue privilege
(with an optional maximum duration, environment and end date) and removes it; requests then
activate it per task, and the shipped policy denies requests outside it.

Lock order: the agent row first, exclusively (`FOR NO KEY UPDATE`): a submit takes it shared
before it reads the eligibility, so a grant, a change of limits or a removal commits wholly
before or after each submit decides; then the eligibility row; the audit chain head last.
"""

from __future__ import annotations

import re
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from approvals import notifications
from approvals.approvers import NOT_AN_APPROVER, may_approve
from approvals.models import Eligibility, EligibilityRequest, Privilege
from approvals.services.cadence import agent_review_reschedule
from approvals.services.common import lock_agents, privilege_by_name
from audit.services import Actor, deferred_evidence, record
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.formatting import duration_words

_ENVIRONMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NOT_A_MANAGER = (
    "Only the agent's sponsor, a person who manages the agent, or an admin may change what it "
    "is eligible for."
)


def may_manage_eligibility(user, agent: Agent) -> bool:
    """The agent's sponsor, a person holding `agents.manage_agent` on it (or on all agents),
    or a superuser; always an active person."""
    if not (getattr(user, "is_authenticated", False) and user.is_active):
        return False
    return (
        user.is_superuser
        or agent.sponsor_id == user.pk
        or user.has_perm("agents.manage_agent")
        or user.has_perm("agents.manage_agent", agent)
    )


def _limits_refusal(
    privilege: Privilege, max_duration_seconds: int | None, environment: str, ends_at
) -> InvalidInput | None:
    if not privilege.enabled:
        return InvalidInput(
            f"{privilege.name} is disabled in the catalogue; no agent can be made eligible for it.",
            code="privilege_disabled",
            fields={"privilege": ["Disabled."]},
        )
    if max_duration_seconds is not None and not (
        0 < max_duration_seconds <= privilege.max_duration_seconds
    ):
        return InvalidInput(
            f"The maximum duration must be between 1 second and {privilege.name}'s own maximum "
            f"of {duration_words(privilege.max_duration_seconds)}.",
            code="invalid_max_duration",
            fields={"max_duration_seconds": [f"At most {privilege.max_duration_seconds}."]},
        )
    if environment and not _ENVIRONMENT.match(environment):
        return InvalidInput(
            "An environment is a short name such as 'production' or 'staging' (letters, digits, "
            "'.', '-', '_').",
            code="invalid_environment",
            fields={"environment": ["Letters, digits, '.', '-', '_'."]},
        )
    if ends_at is not None and (not isinstance(ends_at, datetime) or ends_at <= timezone.now()):
        return InvalidInput(
            "The end date must be in the future.",
            code="invalid_end_date",
            fields={"ends_at": ["In the future."]},
        )
    return None


def eligibility_grant(
    *,
    agent: Agent,
    privilege: Privilege,
    by,
    max_duration_seconds: int | None = None,
    environment: str = "",
    ends_at: datetime | None = None,
    reason: str = "",
) -> Eligibility:
    """Make `agent` eligible for `privilege`. An eligibility already in force is a conflict
    (`eligibility_update` changes its limits); one past its end date is closed and replaced."""
    if not may_manage_eligibility(by, agent):
        raise Forbidden(NOT_A_MANAGER, code="not_eligibility_manager")
    environment = (environment or "").strip()
    refusal = _limits_refusal(privilege, max_duration_seconds, environment, ends_at)
    if refusal is not None:
        raise refusal
    with transaction.atomic(), deferred_evidence():
        agent = lock_agents([agent.pk], exclusive=True)[agent.pk]
        return _eligibility_create(
            agent=agent,
            privilege=privilege,
            actor=Actor.for_user(by),
            max_duration_seconds=max_duration_seconds,
            environment=environment,
            ends_at=ends_at,
            reason=reason,
        )


def _eligibility_create(
    *,
    agent: Agent,
    privilege: Privilege,
    actor: Actor,
    max_duration_seconds: int | None,
    environment: str,
    ends_at: datetime | None,
    reason: str,
    eligibility_request_id: int | None = None,
) -> Eligibility:
    """Inside the caller's transaction, with the agent row already locked exclusively."""
    now = timezone.now()
    if agent.status == Agent.Status.RETIRED:
        raise Conflict(
            f"Agent {agent.name} is retired; it is never eligible for anything again.",
            code="agent_retired",
        )
    current = (
        Eligibility.objects.select_for_update(no_key=True)
        .filter(agent=agent, privilege=privilege, removed_at__isnull=True)
        .first()
    )
    if current is not None:
        if current.ends_at is None or current.ends_at > now:
            raise Conflict(
                f"{agent.name} is already eligible for {privilege.name} "
                f"({current.limits()}); remove that first to change its limits.",
                code="already_eligible",
            )
        current.removed_at, current.removed_by = now, "ended"
        current.save(update_fields=["removed_at", "removed_by"])
    eligibility = Eligibility.objects.create(
        agent=agent,
        privilege=privilege,
        max_duration_seconds=max_duration_seconds,
        environment=environment,
        ends_at=ends_at,
        granted_by=actor.id,
        reason=(reason or "")[:500],
        created_at=now,
    )
    record(
        actor=actor,
        verb="eligibility.granted",
        agent_id=agent.pk,
        data={
            "eligibility_id": eligibility.pk,
            "privilege": privilege.name,
            "max_duration_seconds": max_duration_seconds,
            "environment": environment,
            "ends_at": ends_at.isoformat() if ends_at else None,
            "reason": eligibility.reason,
            "eligibility_request_id": eligibility_request_id,
        },
    )
    agent_review_reschedule(
        agent=agent, actor=actor, why=f"eligible for {privilege.name} ({privilege.risk} risk)"
    )
    return eligibility


def eligibility_remove(*, eligibility_id: int, agent: Agent, by, reason: str = "") -> Eligibility:
    """End an eligibility (kept as history). Requests for it are denied from now on, and live
    grants lose it at their next token refresh or introspection (policy is evaluated again)."""
    if not may_manage_eligibility(by, agent):
        raise Forbidden(NOT_A_MANAGER, code="not_eligibility_manager")
    with transaction.atomic(), deferred_evidence():
        agent = lock_agents([agent.pk], exclusive=True)[agent.pk]
        eligibility = (
            Eligibility.objects.select_for_update(no_key=True)
            .select_related("privilege")
            .filter(pk=eligibility_id, agent=agent)
            .first()
        )
        if eligibility is None:
            raise NotFound(f"{agent.name} has no eligibility #{eligibility_id}.")
        if eligibility.removed_at is not None:
            raise Conflict(
                f"{agent.name}'s eligibility for {eligibility.privilege.name} was already "
                f"removed by {eligibility.removed_by}.",
                code="eligibility_removed",
            )
        eligibility.removed_at = timezone.now()
        eligibility.removed_by = by.get_username()
        eligibility.save(update_fields=["removed_at", "removed_by"])
        record(
            actor=Actor.for_user(by),
            verb="eligibility.removed",
            agent_id=agent.pk,
            data={
                "eligibility_id": eligibility.pk,
                "privilege": eligibility.privilege.name,
                "reason": (reason or "")[:500],
            },
        )
        agent_review_reschedule(
            agent=agent,
            actor=Actor.for_user(by),
            why=f"no longer eligible for {eligibility.privilege.name}",
        )
    return eligibility


def _limits_of(eligibility: Eligibility) -> dict:
    return {
        "max_duration_seconds": eligibility.max_duration_seconds,
        "environment": eligibility.environment,
        "ends_at": eligibility.ends_at.isoformat() if eligibility.ends_at else None,
    }


def eligibility_update(
    *,
    eligibility_id: int,
    agent: Agent,
    by,
    max_duration_seconds: int | None = None,
    environment: str = "",
    ends_at: datetime | None = None,
    reason: str = "",
) -> Eligibility:
    """Change an eligibility's limits in place (each empty limit: none beyond the privilege's).
    The audit event holds the old and new limits. Submits that follow are decided on the new
    limits; live grants meet them at their next token refresh or introspection. Setting the
    limits it already has changes and records nothing."""
    if not may_manage_eligibility(by, agent):
        raise Forbidden(NOT_A_MANAGER, code="not_eligibility_manager")
    environment = (environment or "").strip()
    with transaction.atomic(), deferred_evidence():
        agent = lock_agents([agent.pk], exclusive=True)[agent.pk]
        eligibility = (
            Eligibility.objects.select_for_update(no_key=True)
            .select_related("privilege")
            .filter(pk=eligibility_id, agent=agent)
            .first()
        )
        if eligibility is None:
            raise NotFound(f"{agent.name} has no eligibility #{eligibility_id}.")
        privilege = eligibility.privilege
        if eligibility.removed_at is not None:
            raise Conflict(
                f"{agent.name}'s eligibility for {privilege.name} was removed by "
                f"{eligibility.removed_by}; make it eligible again instead.",
                code="eligibility_removed",
            )
        if eligibility.ends_at is not None and eligibility.ends_at <= timezone.now():
            raise Conflict(
                f"{agent.name}'s eligibility for {privilege.name} ended "
                f"{eligibility.ends_at:%Y-%m-%d %H:%M} UTC; make it eligible again instead.",
                code="eligibility_ended",
            )
        # Checked after the lock: the privilege's own maximum is read as it stands now.
        refusal = _limits_refusal(privilege, max_duration_seconds, environment, ends_at)
        if refusal is not None:
            raise refusal
        old = _limits_of(eligibility)
        eligibility.max_duration_seconds = max_duration_seconds
        eligibility.environment = environment
        eligibility.ends_at = ends_at
        new = _limits_of(eligibility)
        if new == old:
            return eligibility
        eligibility.updated_at = timezone.now()
        eligibility.updated_by = by.get_username()
        eligibility.save(
            update_fields=[
                "max_duration_seconds",
                "environment",
                "ends_at",
                "updated_at",
                "updated_by",
            ]
        )
        record(
            actor=Actor.for_user(by),
            verb="eligibility.updated",
            agent_id=agent.pk,
            data={
                "eligibility_id": eligibility.pk,
                "privilege": privilege.name,
                "old": old,
                "new": new,
                "reason": (reason or "")[:500],
            },
        )
    return eligibility


def eligibility_end_for_retired_agent(*, agent: Agent, actor: Actor) -> int:
    """Retirement removes what the agent was eligible for and denies what it asked to become
    eligible for, keeping both as history. Runs in the retirement's transaction, under the agent
    row lock its sender holds (then these rows, the chain head last). Answers how many ended."""
    now = timezone.now()
    ended = list(
        Eligibility.objects.select_for_update(no_key=True)
        .select_related("privilege")
        .filter(agent=agent, removed_at__isnull=True)
        .order_by("pk")
    )
    for eligibility in ended:
        eligibility.removed_at = now
        eligibility.removed_by = actor.id[:254]
        eligibility.save(update_fields=["removed_at", "removed_by"])
        record(
            actor=actor,
            verb="eligibility.removed",
            agent_id=agent.pk,
            data={
                "eligibility_id": eligibility.pk,
                "privilege": eligibility.privilege.name,
                "reason": "agent retired",
            },
        )
    asked = list(
        EligibilityRequest.objects.select_for_update(no_key=True)
        .select_related("privilege")
        .filter(agent=agent, status=EligibilityRequest.Status.PENDING)
        .order_by("pk")
    )
    for eligibility_request in asked:
        eligibility_request.status = EligibilityRequest.Status.DENIED
        eligibility_request.decided_at = now
        eligibility_request.decided_by = actor.id[:254]
        eligibility_request.comment = "The agent was retired."
        eligibility_request.save(update_fields=["status", "decided_at", "decided_by", "comment"])
        record(
            actor=actor,
            verb="eligibility.request_decided",
            agent_id=agent.pk,
            data={
                "eligibility_request_id": eligibility_request.pk,
                "privilege": eligibility_request.privilege.name,
                "verdict": "deny",
                "comment": eligibility_request.comment,
            },
        )
        notifications.eligibility_request_finished(eligibility_request.pk)
    return len(ended)


# --- an agent asks to become eligible; the people who decide its requests answer -------------


def eligibility_request_submit(
    *,
    agent: Agent,
    privilege_name: str,
    justification: str,
    max_duration_seconds: int | None = None,
    environment: str = "",
    ends_at: datetime | None = None,
) -> EligibilityRequest:
    privilege = privilege_by_name(privilege_name)
    environment = (environment or "").strip()
    refusal = _limits_refusal(privilege, max_duration_seconds, environment, ends_at)
    if refusal is not None:
        raise refusal
    with transaction.atomic(), deferred_evidence():
        agent = lock_agents([agent.pk], exclusive=True)[agent.pk]
        if agent.status != Agent.Status.ACTIVE:
            raise Conflict(
                f"Agent {agent.name} is {agent.status}; it may not ask for anything.",
                code="agent_not_active",
            )
        if Eligibility.objects.in_force().filter(agent=agent, privilege=privilege).exists():
            raise Conflict(
                f"{agent.name} is already eligible for {privilege.name}.",
                code="already_eligible",
            )
        pending = EligibilityRequest.objects.filter(
            agent=agent, privilege=privilege, status=EligibilityRequest.Status.PENDING
        ).first()
        if pending is not None:
            raise Conflict(
                f"{agent.name} already asked to be eligible for {privilege.name} "
                f"(eligibility request #{pending.pk}, pending).",
                code="eligibility_request_pending",
            )
        eligibility_request = EligibilityRequest.objects.create(
            agent=agent,
            privilege=privilege,
            max_duration_seconds=max_duration_seconds,
            environment=environment,
            ends_at=ends_at,
            justification=justification,
        )
        record(
            actor=Actor.for_agent(agent),
            verb="eligibility.requested",
            agent_id=agent.pk,
            data={
                "eligibility_request_id": eligibility_request.pk,
                "privilege": privilege.name,
                "max_duration_seconds": max_duration_seconds,
                "environment": environment,
                "ends_at": ends_at.isoformat() if ends_at else None,
                "justification": justification,
            },
        )
        notifications.eligibility_request_pending(eligibility_request.pk)
    return eligibility_request


def eligibility_request_decide(
    *, eligibility_request_id: int, by, verdict: str, comment: str = "", channel: str = "web"
) -> EligibilityRequest:
    """Decided once, by a person who may decide the agent's requests (`may_approve`, the same
    rule as access requests); approved, the agent becomes eligible with the limits it asked.
    `channel` (web, slack, admin) is evidence; in Slack, a privilege above its Slack risk
    ceiling is approved in the browser, as its access requests are."""
    if verdict not in ("approve", "deny"):
        raise InvalidInput("verdict is 'approve' or 'deny'.", code="invalid_verdict")
    agent_id = (
        EligibilityRequest.objects.filter(pk=eligibility_request_id)
        .values_list("agent_id", flat=True)
        .first()
    )
    if agent_id is None:
        raise NotFound(f"There is no eligibility request #{eligibility_request_id}.")
    with transaction.atomic(), deferred_evidence():
        agent = lock_agents([agent_id], exclusive=True)[agent_id]
        eligibility_request = (
            EligibilityRequest.objects.select_for_update(no_key=True)
            .select_related("privilege")
            .get(pk=eligibility_request_id)
        )
        eligibility_request.agent = agent
        if not may_approve(by, eligibility_request):
            raise Forbidden(NOT_AN_APPROVER, code="not_an_approver")
        if eligibility_request.status != EligibilityRequest.Status.PENDING:
            raise Conflict(
                f"Eligibility request #{eligibility_request.pk} is already "
                f"{eligibility_request.status}.",
                code="eligibility_request_decided",
            )
        privilege = eligibility_request.privilege
        if channel == "slack" and verdict == "approve" and not privilege.approvable_in_slack():
            raise Forbidden(
                f"Eligibility for {privilege.risk} privileges is approved in Custody's web app.",
                code="approve_in_browser",
            )
        approved = verdict == "approve"
        eligibility_request.status = (
            EligibilityRequest.Status.APPROVED if approved else EligibilityRequest.Status.DENIED
        )
        eligibility_request.decided_at = timezone.now()
        eligibility_request.decided_by = by.get_username()
        eligibility_request.comment = (comment or "")[:1000]
        record(
            actor=Actor.for_user(by),
            verb="eligibility.request_decided",
            agent_id=agent.pk,
            data={
                "eligibility_request_id": eligibility_request.pk,
                "privilege": eligibility_request.privilege.name,
                "verdict": verdict,
                "comment": eligibility_request.comment,
                "channel": channel,
            },
        )
        if approved:
            eligibility_request.eligibility = _eligibility_create(
                agent=agent,
                privilege=eligibility_request.privilege,
                actor=Actor.for_user(by),
                max_duration_seconds=eligibility_request.max_duration_seconds,
                environment=eligibility_request.environment,
                ends_at=eligibility_request.ends_at,
                reason=eligibility_request.justification,
                eligibility_request_id=eligibility_request.pk,
            )
        eligibility_request.save(
            update_fields=["status", "decided_at", "decided_by", "comment", "eligibility"]
        )
        notifications.eligibility_request_finished(eligibility_request.pk)
    return eligibility_request
