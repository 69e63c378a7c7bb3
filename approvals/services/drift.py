"""Drift: each recorded tool call compared with its grant's declared intent and privilege.

Custody finds the facts (target outside the intent's target, an action the privilege does not
cover, a call after the task said it was done, a burst); the drift policy decides what they mean
(allow, flag, or end the grant). A flag is a row, audited `grant.drift_flagged` in the caller's
transaction, and its sponsor hears on commit. Ending goes through `grant_end` after the call's
transaction, so it takes its locks in the documented order (agent, request, grants).
"""

from __future__ import annotations

from datetime import timedelta
from fnmatch import fnmatchcase

from django.conf import settings
from django.utils import timezone

from approvals import notifications
from approvals.drift_policy import DriftDecision, decide_drift
from approvals.models import DriftFlag, Grant
from audit.models import AuditEvent
from audit.services import Actor, record

Reason = Grant.RevokeReason


def target_within(target: str, intent_target: str) -> bool:
    """A call's target is within the intent's when equal, matched by the intent's glob, or below
    it (`db/orders` covers `db/orders/42`, `db/orders.items`, `db/orders:7`)."""
    if not intent_target or not target:
        return True
    if any(char in intent_target for char in "*?["):
        return fnmatchcase(target, intent_target)
    base = intent_target.rstrip("/:.")
    return target == intent_target or any(target.startswith(base + sep) for sep in "/:.")


def action_covered(action: str, privilege_action: str) -> bool:
    """The privilege's action covers itself; `write` and `admin` also cover `read`; `admin` all."""
    if not action or action == privilege_action or privilege_action == "admin":
        return True
    return action == "read" and privilege_action == "write"


def drift_kinds(*, grant: Grant, tool: str, target: str, action: str, completed: bool) -> list:
    intent = grant.access_request.intent or {}
    kinds = []
    if not target_within(target, intent.get("target", "")):
        kinds.append(DriftFlag.Kind.TARGET.value)
    if not action_covered(action, grant.privilege.action):
        kinds.append(DriftFlag.Kind.ACTION.value)
    if completed:
        kinds.append(DriftFlag.Kind.AFTER_COMPLETION.value)
    return kinds


def calls_in_window(*, grant: Grant) -> int:
    since = timezone.now() - timedelta(seconds=settings.CUSTODY_DRIFT_WINDOW)
    return AuditEvent.objects.filter(
        grant_id=grant.pk, verb="tool.called", occurred_at__gte=since
    ).count()


def drift_flagged(*, grant: Grant, kind: str, since=None) -> bool:
    """Whether the grant already carries a flag of this kind (since a moment, if given)."""
    flags = DriftFlag.objects.filter(grant=grant)
    if since is not None:
        flags = flags.filter(created_at__gte=since)
    # One EXISTS, however many flags a drifting grant has piled up.
    return flags.with_kind(kind).exists()


def burst_flagged_in_window(*, grant: Grant) -> bool:
    since = timezone.now() - timedelta(seconds=settings.CUSTODY_DRIFT_WINDOW)
    return drift_flagged(grant=grant, kind=DriftFlag.Kind.BURST, since=since)


def drift_decide(
    *,
    grant: Grant,
    tool: str,
    target: str,
    action: str,
    outcome: str,
    kinds: list,
    calls: int,
    generation: int | None = None,
) -> DriftDecision:
    """What the drift policy says of one call; `generation` is the policy generation when the
    caller read it already (else it is read here)."""
    agent = grant.agent
    privilege = grant.privilege
    intent = grant.access_request.intent or {}
    return decide_drift(
        agent={"id": agent.spiffe_id, "attrs": {"name": agent.name, "status": agent.status}},
        privilege={
            "id": privilege.name,
            "attrs": {
                "name": privilege.name,
                "resource": privilege.resource,
                "action": privilege.action,
                "risk": privilege.risk,
                "risk_level": privilege.risk_level,
            },
        },
        context={
            "tool": tool,
            "target": target,
            "action": action,
            "outcome": outcome,
            "intent_action": intent.get("action", ""),
            "intent_target": intent.get("target", ""),
            "calls_in_window": calls,
            "drift": kinds,
            "drifted": bool(kinds),
        },
        generation=generation,
    )


def drift_flag_record(
    *, grant: Grant, actor: Actor, tool: str, target: str, kinds: list, decision: DriftDecision
) -> DriftFlag:
    """Inside the caller's transaction, with the grant locked."""
    flag = DriftFlag.objects.create(
        grant=grant,
        kinds=kinds,
        outcome=decision.outcome,
        tool=tool,
        target=target,
        policy_ids=decision.policy_ids,
    )
    record(
        actor=actor,
        verb="grant.drift_flagged",
        agent_id=grant.agent_id,
        access_request_id=grant.access_request_id,
        grant_id=grant.pk,
        data={
            "flag": flag.pk,
            "kinds": kinds,
            "outcome": decision.outcome,
            "tool": tool,
            "target": target,
            "policies": decision.policy_ids,
        },
    )
    notifications.grant_drifted(flag.pk)
    return flag


def drift_end_grant(*, grant_id: int, flag: DriftFlag) -> bool:
    """The drift policy said end: the grant and everything delegated from it end now."""
    from approvals.services.grants import grant_end

    return grant_end(
        grant_id=grant_id,
        reason=Reason.DRIFT,
        actor=Actor.system("drift policy"),
        detail=f"Drift ({', '.join(flag.kinds)}) under {', '.join(flag.policy_ids) or 'policy'}.",
    )


def drift_output(flag: DriftFlag | None) -> dict | None:
    if flag is None:
        return None
    return {
        "flag": flag.pk,
        "kinds": flag.kinds,
        "outcome": flag.outcome,
        "policies": flag.policy_ids,
    }
