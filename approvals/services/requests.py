"""Access requests: submit, cancel, the deadline (expire) and its escalation point, and a
request for more time on a live grant."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from agents.models import Agent
from approvals import approvers, notifications, policy
from approvals.models import (
    AccessRequest,
    Decision,
    Grant,
    Privilege,
)
from approvals.services.common import (
    agent_refusal_evidence,
    lock_agents,
    on_commit_request_finished,
    policy_change_lock,
    privilege_by_name,
    request_transition,
)
from approvals.services.facts import (
    chain_agent_ids,
    chain_facts,
    cumulative_limit,
    decision_reads,
    policy_facts,
    privilege_toxic_with,
)
from approvals.services.grants import first_of_extensions, grant_issue
from approvals.services.tokens import token_issue
from approvals.tokens import IssuedToken
from audit.services import Actor, deferred_evidence, record, record_throttled
from core import log_context
from core.errors import Conflict, InvalidInput, NotFound, TooManyRequests

security_log = logging.getLogger("custody.security")

Status = AccessRequest.Status


@dataclass
class SubmitResult:
    access_request: AccessRequest
    grant: Grant | None = None
    token: IssuedToken | None = None


def access_request_submit(
    *,
    agent: Agent,
    privilege_name: str,
    task_id: str,
    duration_seconds: int,
    intent: dict,
    context: dict | None = None,
    parent_grant: Grant | None = None,
    extension_of: Grant | None = None,
    flood_evidence_here: bool = True,
) -> SubmitResult:
    """An agent asks for a privilege; policy decides at once whether it is automatic,
    needs people, or is denied. A caller that runs this inside its own transaction (delegation)
    passes `flood_evidence_here=False` and records a refusal itself, after its own rollback."""
    context = context or {}
    privilege = privilege_by_name(privilege_name)
    if duration_seconds > privilege.max_duration_seconds:
        raise InvalidInput(
            f"{privilege.name} may be held for at most {privilege.max_duration_seconds} seconds; "
            f"{duration_seconds} were asked for.",
            code="duration_exceeds_maximum",
            fields={"duration_seconds": [f"At most {privilege.max_duration_seconds}."]},
        )
    initiated_by = str(context.get("initiated_by", ""))[:254]
    actor = Actor.for_agent(agent)

    try:
        return _submit(
            agent=agent,
            privilege=privilege,
            task_id=task_id,
            duration_seconds=duration_seconds,
            intent=intent,
            context=context,
            parent_grant=parent_grant,
            extension_of=extension_of,
            initiated_by=initiated_by,
            actor=actor,
        )
    except TooManyRequests as refusal:
        # Its evidence commits on its own, after the rolled-back attempt.
        if flood_evidence_here:
            flood_evidence(
                agent=agent, refusal=refusal, privilege_name=privilege.name, task_id=task_id
            )
        raise


def flood_evidence(*, agent: Agent, refusal: TooManyRequests, **data) -> None:
    """A `request.throttled` event, at most so many per agent per minute (the flood it records
    must not fill the log)."""
    record_throttled(
        bucket=f"flood:{agent.pk}",
        per_minute=settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE,
        actor=Actor.for_agent(agent),
        verb="request.throttled",
        agent_id=agent.pk,
        data={
            **data,
            "message": refusal.message,
            "cap": settings.CUSTODY_MAX_PENDING_PER_AGENT,
            "retry_after": refusal.retry_after,
        },
    )


def _pending_cap_check(agent: Agent) -> None:
    """Flood control: refuse a request that would leave `agent` with more than
    CUSTODY_MAX_PENDING_PER_AGENT requests waiting for people. Exact under concurrent submits:
    on PostgreSQL the submitters of one agent that are about to add a pending request take
    turns through a transaction-scoped advisory lock (after the agent's row lock, so the lock
    order holds), and each counts, in a fresh READ COMMITTED snapshot, what those before it
    committed."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_PENDING_CAP_LOCK, agent.pk])
    cap = settings.CUSTODY_MAX_PENDING_PER_AGENT
    now = timezone.now()
    pending = AccessRequest.objects.filter(
        agent=agent, status=Status.PENDING, decision_deadline__gt=now
    )
    count = pending.count()
    if count < cap:
        return
    earliest = pending.order_by("decision_deadline").values_list("decision_deadline", flat=True)
    first_deadline = earliest.first()
    retry_after = int((first_deadline - now).total_seconds()) + 1 if first_deadline else 1
    raise TooManyRequests(
        f"Agent {agent.name} has {count} requests waiting for people; at most {cap} may be "
        "pending at once. Wait for a decision, or cancel one, before asking again.",
        code="too_many_pending_requests",
        retry_after=retry_after,
    )


# The first key of the flood-control advisory lock (the second is the agent's id).
_PENDING_CAP_LOCK = 0x43555354  # "CUST"


# The requests policy decides alone: created in their final status, with this reason.
_DECIDED_BY_POLICY = {
    "deny": (Status.DENIED, "denied by policy"),
    "auto_approve": (Status.APPROVED, "approved by policy"),
}


def _submit(
    *,
    agent: Agent,
    privilege: Privilege,
    task_id: str,
    duration_seconds: int,
    intent: dict,
    context: dict,
    parent_grant: Grant | None,
    extension_of: Grant | None,
    initiated_by: str,
    actor: Actor,
) -> SubmitResult:
    with transaction.atomic(), deferred_evidence():
        # Lock order step 1, first thing: the agent (and its delegation chain). A suspension
        # either committed before (its status is read again here) or waits for this request and
        # then ends its grant. A privilege in a toxic pair takes the agent exclusively, so two
        # halves of a pair are decided one after the other, each seeing what the other got.
        # The pairs are read once, for the lock mode and for policy (as is_toxic read them).
        toxic_with = privilege_toxic_with(privilege)
        locked = lock_agents(chain_agent_ids(parent_grant, agent.pk), exclusive=bool(toxic_with))
        agent = locked[agent.pk]
        if agent.status != Agent.Status.ACTIVE:
            raise Conflict(
                f"Agent {agent.name} is {agent.status}; it gets no new privilege.",
                code="agent_not_active",
            )
        chain = chain_facts(parent=parent_grant, agent=agent)
        policy_change_lock(exclusive=False)  # a policy change commits before or after this
        # Read after both locks, so it includes whatever they waited for (one statement on
        # PostgreSQL): held privileges, eligibility, the policy generation.
        reads = decision_reads(chain.agent_pks, agent=agent, privilege=privilege)
        facts = policy_facts(
            agent=agent,
            privilege=privilege,
            intent=intent,
            duration_seconds=duration_seconds,
            context=context,
            task_id=task_id,
            initiated_by=initiated_by,
            is_extension=extension_of is not None,
            chain=chain,
            toxic_with=toxic_with,
            held_privileges=reads.held_privileges,
            eligibility=reads.eligibility,
        )
        compiled = policy.policies_at(reads.generation)
        outcome = cumulative_limit(
            policy.decide(compiled, facts),
            agent_id=agent.pk,
            privilege=privilege,
            duration_seconds=duration_seconds,
        )
        if outcome.outcome == "request":
            _pending_cap_check(agent)  # people would decide: one more in the agent's queue
        now = timezone.now()
        deadline_seconds = privilege.decision_deadline_seconds
        # Policy's own answers are final at once: the request is created decided (no UPDATE
        # after the INSERT); one routed to people starts pending.
        status, final_reason = _DECIDED_BY_POLICY.get(outcome.outcome, (Status.PENDING, ""))
        access_request = AccessRequest.objects.create(
            agent=agent,
            privilege=privilege,
            task_id=task_id,
            intent=intent,
            context=context,
            duration_seconds=duration_seconds,
            parent_grant=parent_grant,
            extension_of=extension_of,
            initiated_by=initiated_by,
            policy_outcome=outcome.outcome,
            policy_ids=outcome.policy_ids,
            policy_reason=outcome.reason,
            approvals_required=outcome.approvals_required,
            approvals_privilege=privilege.approvals_required,
            approvals_policy=outcome.policy_approvals,
            approvals_policy_id=outcome.policy_approvals_id[:200],
            created_at=now,
            decision_deadline=now + timedelta(seconds=deadline_seconds),
            escalation_at=now + timedelta(seconds=deadline_seconds // 2),
            status=status,
            decided_at=now if status != Status.PENDING else None,
            final_reason=final_reason,
        )
        ids = {"agent_id": agent.pk, "access_request_id": access_request.pk}
        log_context.bind(access_request_id=access_request.pk, task_id=access_request.task_id)
        record(
            actor=actor,
            verb="request.created",
            **ids,
            data={
                "privilege": privilege.name,
                "task_id": task_id,
                "intent": intent,
                "duration_seconds": duration_seconds,
                "context": context,
                "parent_grant_id": parent_grant.pk if parent_grant else None,
                "extension_of": extension_of.pk if extension_of else None,
            },
        )
        record(
            actor=Actor.system("policy"),
            verb="policy.evaluated",
            **ids,
            data={
                "outcome": outcome.outcome,
                "policies": outcome.policy_ids,
                "reason": outcome.reason,
                "approvals_required": outcome.approvals_required,
                "generation": compiled.generation,
            },
        )
        result = SubmitResult(access_request)
        if outcome.outcome == "deny":
            security_log.warning(
                "Policy denied the request: %s",
                outcome.reason,
                extra={"event": "request.denied", "policies": outcome.policy_ids},
            )
            record(
                actor=Actor.system("policy"),
                verb="request.denied",
                **ids,
                data={"reason": outcome.reason},
            )
        elif outcome.outcome == "auto_approve":
            Decision.objects.create(
                access_request=access_request,
                verdict=Decision.Verdict.APPROVE,
                channel=Decision.Channel.POLICY,
                comment=outcome.reason,
            )
            record(
                actor=Actor.system("policy"),
                verb="decision.recorded",
                **ids,
                data={"verdict": "approve", "channel": "policy", "policies": outcome.policy_ids},
            )
            # The one approval is the policy's, just recorded: no need to read it back.
            result.grant = grant_issue(
                access_request, actor=Actor.system("policy"), approvers=["policy"]
            )
            result.token = token_issue(result.grant, actor=actor)
        else:
            notifications.request_pending(access_request.pk)
            _escalate_if_too_few(access_request)
    return result


def _escalate_if_too_few(access_request: AccessRequest) -> None:
    """Fewer distinct people may approve than the request needs: waiting for its escalation
    point would only waste half its deadline, so the team, the approver group and the sponsor
    hear of it now. Claimed like the sweep's escalation (`escalated_at`), so it happens once."""
    progress = approvers.progress_of(access_request)
    if not progress.cannot_be_met:
        return
    AccessRequest.objects.filter(pk=access_request.pk).update(
        escalated_at=access_request.created_at
    )
    access_request.escalated_at = access_request.created_at
    record(
        actor=Actor.system("escalation"),
        verb="request.escalated",
        agent_id=access_request.agent_id,
        access_request_id=access_request.pk,
        data={
            "why": "too_few_approvers",
            "team": access_request.agent.team.name,
            "may_approve": progress.waiting_for,
            "initiator": progress.initiator,
            "approvals_required": access_request.approvals_required,
            "approvals_rule": progress.rule,
        },
    )
    notifications.request_escalated(access_request.pk)


def access_request_cancel(*, access_request_id: int, agent: Agent) -> AccessRequest:
    status_before = None
    try:
        with transaction.atomic():
            access_request = (
                AccessRequest.objects.select_for_update(no_key=True)
                .filter(pk=access_request_id, agent=agent)
                .first()
            )
            if access_request is None:
                raise NotFound(f"There is no request #{access_request_id} of yours.")
            status_before = access_request.status
            request_transition(access_request, Status.CANCELLED, reason="cancelled by the agent")
            record(
                actor=Actor.for_agent(agent),
                verb="request.cancelled",
                agent_id=agent.pk,
                access_request_id=access_request.pk,
            )
            on_commit_request_finished(access_request.pk)
    except Conflict as refusal:
        # The refusal's evidence commits on its own, after the rolled-back attempt.
        agent_refusal_evidence(
            agent=agent,
            verb="request.cancel_refused",
            access_request_id=access_request_id,
            data={"why": refusal.code, "status": status_before},
        )
        raise
    return access_request


def access_request_mark_expired(access_request: AccessRequest) -> None:
    request_transition(access_request, Status.EXPIRED, reason="no decision before the deadline")
    record(
        actor=Actor.system("deadline"),
        verb="request.expired",
        agent_id=access_request.agent_id,
        access_request_id=access_request.pk,
        data={"deadline": access_request.decision_deadline.isoformat()},
    )
    on_commit_request_finished(access_request.pk)


def access_request_expire(*, access_request_id: int) -> bool:
    """Expire a pending request whose deadline has passed. Safe to run twice."""
    with transaction.atomic():
        access_request = (
            AccessRequest.objects.select_for_update(no_key=True)
            .filter(pk=access_request_id, status=Status.PENDING)
            .first()
        )
        if access_request is None or not access_request.deadline_passed():
            return False
        access_request_mark_expired(access_request)
        return True


def access_request_escalate(*, access_request_id: int) -> bool:
    """At the escalation point a silent request reaches the team and backup approvers, once."""
    now = timezone.now()
    with transaction.atomic():
        claimed = AccessRequest.objects.filter(
            pk=access_request_id,
            status=Status.PENDING,
            escalated_at__isnull=True,
            escalation_at__lte=now,
            decision_deadline__gt=now,
        ).update(escalated_at=now)
        if not claimed:
            return False
        access_request = AccessRequest.objects.select_related("agent__team").get(
            pk=access_request_id
        )
        record(
            actor=Actor.system("escalation"),
            verb="request.escalated",
            agent_id=access_request.agent_id,
            access_request_id=access_request.pk,
            data={
                "team": access_request.agent.team.name,
                "approvals_received": access_request.approvals_received(),
                "approvals_required": access_request.approvals_required,
                "deadline": access_request.decision_deadline,
            },
        )
        notifications.request_escalated(access_request_id)
    return True


def access_requests_escalate_for_orphan(*, agent: Agent, actor: Actor) -> int:
    """An agent lost its sponsor or its team: each of its pending requests goes to its backup
    approvers and its team now, not at its escalation point. Called with the agent row locked
    (agents.signals.agent_flagged); the requests are locked next, in primary-key order."""
    now = timezone.now()
    pending = list(
        AccessRequest.objects.select_for_update(no_key=True)
        .filter(agent=agent, status=Status.PENDING, decision_deadline__gt=now)
        .order_by("pk")
    )
    for access_request in pending:
        if access_request.escalated_at is None:
            access_request.escalated_at = now
            access_request.save(update_fields=["escalated_at"])
        record(
            actor=actor,
            verb="request.escalated",
            agent_id=agent.pk,
            access_request_id=access_request.pk,
            data={
                "why": "agent_orphaned",
                "orphan_reason": agent.orphan_reason,
                "team": agent.team.name,
                "backups": sorted(agent.backup_approvers.values_list("user__username", flat=True)),
            },
        )
        notifications.request_escalated(access_request.pk)
    return len(pending)


def grant_extension_request(
    *, grant: Grant, agent: Agent, duration_seconds: int, intent: dict, context: dict | None = None
) -> SubmitResult:
    """More time is a new request, decided like any other: never a silent renewal, and never
    beyond the privilege's maximum counted from the first grant."""
    if grant.agent_id != agent.pk:
        raise NotFound("Not found.")
    if not grant.is_active():
        raise Conflict(
            f"Grant #{grant.pk} has ended; ask for the privilege again.", code="grant_not_active"
        )
    first = first_of_extensions(grant)
    limit = first.issued_at + timedelta(seconds=grant.privilege.max_duration_seconds)
    remaining = int((limit - timezone.now()).total_seconds())
    if duration_seconds > remaining:
        raise InvalidInput(
            f"{grant.scope} may be held for at most {grant.privilege.max_duration_seconds} s "
            f"from the first grant; at most {max(remaining, 0)} s remain.",
            code="extension_exceeds_maximum",
            fields={"duration_seconds": [f"At most {max(remaining, 0)}."]},
        )
    return access_request_submit(
        agent=agent,
        privilege_name=grant.scope,
        task_id=grant.task_id,
        duration_seconds=duration_seconds,
        intent=intent,
        context=context,
        parent_grant=grant.parent,
        extension_of=grant,
    )
