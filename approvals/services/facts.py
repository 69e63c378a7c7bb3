"""The facts policy is evaluated on: the agent, the privilege, the delegation chain, what the
agent already holds, and the cumulative time limit on automatic approvals."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from agents.models import Agent
from approvals import policy
from approvals.lineage import grant_ancestors, grant_approvers
from approvals.models import (
    AccessRequest,
    Eligibility,
    Grant,
    Privilege,
)
from core.formatting import duration_words as words


@dataclass(frozen=True)
class EligibilityFacts:
    eligible_for: tuple[str, ...] = ()
    eligible: bool = False
    ended: bool = False
    max_duration_seconds: int = 0
    environment: str = ""
    ends: str = ""


def eligibility_facts(agent: Agent, privilege: Privilege) -> EligibilityFacts:
    """The agent's eligibility, as policy sees it: every privilege it may ask for now, and the
    limits of its eligibility for `privilege` (one not removed; an ended one says when)."""
    now = timezone.now()
    rows = list(
        Eligibility.objects.filter(agent=agent, removed_at__isnull=True).values_list(
            "privilege_id",
            "privilege__resource",
            "privilege__action",
            "max_duration_seconds",
            "environment",
            "ends_at",
        )
    )
    eligible_for = tuple(
        sorted(
            f"{resource}:{action}"
            for _, resource, action, *_, ends in rows
            if not ends or ends > now
        )
    )
    for privilege_id, _, _, max_duration, environment, ends_at in rows:
        if privilege_id == privilege.pk:
            return EligibilityFacts(
                eligible_for=eligible_for,
                eligible=True,
                ended=ends_at is not None and ends_at <= now,
                max_duration_seconds=max_duration or 0,
                environment=environment,
                ends=f"{ends_at:%Y-%m-%d %H:%M} UTC" if ends_at else "",
            )
    return EligibilityFacts(eligible_for=eligible_for)


@dataclass(frozen=True)
class ChainFacts:
    depth: int
    root_agent: str
    root_approver: str
    agents: tuple[str, ...]
    crosses_sponsor: bool
    agent_pks: tuple[int, ...] = ()


def _held_live(agent_ids: Iterable[int], *, exclude_grant_id: int | None = None) -> tuple:
    """Every privilege the agents hold live, in any task: toxic pairs are judged on all of it
    (the agent and its delegation chain), not only on the task the agent chose to name."""
    now = timezone.now()
    grants = Grant.objects.filter(agent_id__in=list(agent_ids)).live(now)
    if exclude_grant_id is not None:
        grants = grants.exclude(pk=exclude_grant_id)
    return tuple(sorted(grants.values_list("scope", flat=True).distinct()))


def policy_facts(
    *,
    agent: Agent,
    privilege: Privilege,
    intent: dict,
    duration_seconds: int,
    context: dict,
    task_id: str,
    initiated_by: str,
    is_extension: bool = False,
    chain: ChainFacts | None = None,
    exclude_grant_id: int | None = None,
    held_privileges: tuple[str, ...] | None = None,
    toxic_with: tuple[str, ...] | None = None,
    eligibility: EligibilityFacts | None = None,
) -> policy.PolicyFacts:
    """`held_privileges` and `toxic_with`, when the caller already read them (the policy
    simulation, for many requests at once), are not read again."""
    now = timezone.now()
    chain = chain or chain_facts(parent=None, agent=agent)
    if toxic_with is None:
        toxic_with = privilege_toxic_with(privilege)
    if held_privileges is None:
        held_privileges = _held_live(chain.agent_pks, exclude_grant_id=exclude_grant_id)
    if eligibility is None:
        eligibility = eligibility_facts(agent, privilege)
    return policy.PolicyFacts(
        agent_id=agent.spiffe_id,
        agent_name=agent.name,
        agent_status=agent.status,
        sponsor=agent.sponsor_name,
        team=agent.team.name,
        privilege_name=privilege.name,
        resource=privilege.resource,
        action=privilege.action,
        risk=privilege.risk,
        risk_level=privilege.risk_level,
        max_duration_seconds=privilege.max_duration_seconds,
        approvals_required=privilege.approvals_required,
        toxic_with=toxic_with,
        intent=intent,
        duration_seconds=duration_seconds,
        environment=str(context.get("environment", "")),
        hour_utc=now.hour,
        weekday=now.isoweekday(),
        initiated_by=initiated_by,
        held_privileges=held_privileges,
        is_extension=is_extension,
        delegation_depth=chain.depth,
        root_agent=chain.root_agent,
        root_approver=chain.root_approver,
        chain=chain.agents,
        crosses_sponsor=chain.crosses_sponsor,
        eligible_for=eligibility.eligible_for,
        eligible=eligibility.eligible,
        eligibility_ended=eligibility.ended,
        eligibility_max_duration_seconds=eligibility.max_duration_seconds,
        eligibility_environment=eligibility.environment,
        eligibility_ends=eligibility.ends,
    )


def privilege_toxic_with(privilege: Privilege) -> tuple[str, ...]:
    return tuple(
        f"{resource}:{action}"
        for resource, action in privilege.toxic_with.values_list("resource", "action")
    )


def chain_facts(*, parent: Grant | None, agent: Agent) -> ChainFacts:
    """What policy needs to know about a delegation chain ending at `agent`."""
    if parent is None:
        return ChainFacts(0, agent.spiffe_id, "", (agent.spiffe_id,), False, (agent.pk,))
    ancestors = grant_ancestors(parent)
    root = ancestors[-1]
    return ChainFacts(
        depth=parent.depth + 1,
        root_agent=root.agent.spiffe_id,
        root_approver=", ".join(grant_approvers(root)),
        agents=tuple(g.agent.spiffe_id for g in reversed(ancestors)) + (agent.spiffe_id,),
        crosses_sponsor=parent.agent.sponsor_id != agent.sponsor_id,
        agent_pks=tuple(g.agent_id for g in reversed(ancestors)) + (agent.pk,),
    )


def chain_agent_ids(parent: Grant | None, agent_id: int) -> list[int]:
    """The agents of a delegation chain ending at `agent_id` (a grant's agent never changes,
    so this is read before any lock, to know which agents to lock)."""
    ids = [agent_id]
    grant_id = parent.pk if parent is not None else None
    while grant_id is not None:
        agent_of, grant_id = Grant.objects.filter(pk=grant_id).values_list("agent_id", "parent_id")[
            0
        ]
        ids.append(agent_of)
    return ids


def is_toxic(privilege: Privilege) -> bool:
    return privilege.toxic_with.exists()


def _cumulative_seconds(agent_id: int, privilege: Privilege, now) -> int:
    """Seconds the agent has held (or still may hold, for a live grant) the privilege within
    the cumulative window: back-to-back fresh requests add up here."""
    window_start = now - timedelta(seconds=settings.CUSTODY_CUMULATIVE_WINDOW_SECONDS)
    total = 0.0
    for issued_at, expires_at, revoked_at in Grant.objects.filter(
        agent_id=agent_id, privilege=privilege, expires_at__gt=window_start
    ).values_list("issued_at", "expires_at", "revoked_at"):
        end = min(expires_at, revoked_at) if revoked_at else expires_at
        total += max((end - max(issued_at, window_start)).total_seconds(), 0)
    return int(total)


def cumulative_limit(
    outcome: policy.PolicyOutcome, *, agent_id: int, privilege: Privilege, duration_seconds: int
) -> policy.PolicyOutcome:
    """An automatic approval that would take the agent's cumulative time with the privilege
    past CUSTODY_CUMULATIVE_FACTOR × its maximum within the window goes to people instead."""
    factor = settings.CUSTODY_CUMULATIVE_FACTOR
    if outcome.outcome != "auto_approve" or factor <= 0:
        return outcome
    limit = int(factor * privilege.max_duration_seconds)
    held = _cumulative_seconds(agent_id, privilege, timezone.now())
    if held + duration_seconds <= limit:
        return outcome
    window = settings.CUSTODY_CUMULATIVE_WINDOW_SECONDS
    return policy.PolicyOutcome(
        "request",
        ["cumulative-limit-needs-people"],
        f"The agent has held {privilege.name} for {words(held)} in the last {words(window)}; "
        f"with the {words(duration_seconds)} asked for that is "
        f"{words(held + duration_seconds)}, over the {words(limit)} that may be granted "
        f"automatically in that window ({factor:g} × the privilege's maximum of "
        f"{words(privilege.max_duration_seconds)}), "
        "so people decide.",
        outcome.approvals_required,
    )


def request_policy_facts(
    access_request: AccessRequest,
    *,
    exclude_grant_id=None,
    held_privileges: tuple[str, ...] | None = None,
    toxic_with: tuple[str, ...] | None = None,
):
    return policy_facts(
        agent=access_request.agent,
        privilege=access_request.privilege,
        intent=access_request.intent,
        duration_seconds=access_request.duration_seconds,
        context=access_request.context,
        task_id=access_request.task_id,
        initiated_by=access_request.initiated_by,
        is_extension=access_request.extension_of_id is not None,
        chain=chain_facts(parent=access_request.parent_grant, agent=access_request.agent),
        exclude_grant_id=exclude_grant_id,
        held_privileges=held_privileges,
        toxic_with=toxic_with,
    )
