"""Writes about privileges: submit, decide, cancel, expire, grant, revoke, tokens, tool calls.

Every rule lives here once; the REST API, the web UI, Slack and Celery call these functions.
Each state change re-reads its rows under `select_for_update()` inside `transaction.atomic()`,
writes its audit event in the same transaction, and defers slow work with `on_commit`.
A refusal that must leave evidence (a late or duplicate decision) commits the audit event and
then raises, so the caller still gets its 4xx.

Lock order — the one order for every transaction in Custody (README, "Security" → "Lock
order", is the reference; agents/services.py follows the same):
1. agent row(s), in primary-key order, through `lock_agents`: `FOR SHARE` to read-guard an
   agent's status (submit, decide, delegation), `FOR NO KEY UPDATE` to change it (suspend,
   retire, reactivate, ownership) or to serialize one agent's submits of a privilege that is
   part of a toxic pair;
2. access request(s);
3. grant(s), in primary-key order (`lock_in_pk_order`), parents before the children found
   under them;
4. any other row;
5. the audit chain head, last: `record()` appends at the end of `deferred_evidence()`.
Row locks are `FOR NO KEY UPDATE`, never plain `FOR UPDATE`: no transaction here changes a key,
and PostgreSQL's deferred foreign-key checks take `KEY SHARE` on the referenced agent, request
or grant at COMMIT — after the chain head — which a `FOR UPDATE` would block into a deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from guardian.shortcuts import get_group_perms, get_user_perms

from agents.models import Agent
from agents.workload_identity import IdentityRejected, verify_delegation_actor_token
from approvals import policy
from approvals.models import (
    RISK_LEVEL,
    AccessRequest,
    Decision,
    Grant,
    PolicyRevision,
    PolicySetState,
    Privilege,
)
from approvals.tokens import IssuedToken, TokenInvalid, token_sign, token_verify
from audit.services import Actor, deferred_evidence, record, record_throttled
from core.errors import Conflict, Forbidden, InvalidInput, NotFound

Status = AccessRequest.Status
Reason = Grant.RevokeReason


# --- helpers -----------------------------------------------------------------------------------


def lock_in_pk_order(queryset: QuerySet) -> list:
    """Lock several rows in one fixed order (primary key) so concurrent lockers never deadlock.
    `FOR NO KEY UPDATE`: a foreign-key check at another transaction's COMMIT still passes."""
    return list(queryset.select_for_update(no_key=True).order_by("pk"))


def lock_agents(agent_ids: Iterable[int], *, exclusive: bool = False) -> dict[int, Agent]:
    """Step 1 of the lock order: the agents, in primary-key order, re-read under the lock.

    Shared (`FOR SHARE`) guards a status read against a concurrent suspension; `exclusive`
    (`FOR NO KEY UPDATE`) also serializes with every other locker of the agent."""
    ids = sorted(set(agent_ids))
    queryset = Agent.objects.filter(pk__in=ids).order_by("pk").select_related("sponsor", "team")
    if exclusive:
        return {agent.pk: agent for agent in queryset.select_for_update(no_key=True, of=("self",))}
    if connection.vendor == "postgresql":  # Django's ORM has no FOR SHARE; SQLite needs none
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id FROM {Agent._meta.db_table} WHERE id = ANY(%s) "  # noqa: S608
                "ORDER BY id FOR SHARE",
                [ids],
            )
    return {agent.pk: agent for agent in queryset}


def privilege_by_name(name: str) -> Privilege:
    resource, sep, action = (name or "").partition(":")
    found = (
        Privilege.objects.filter(resource=resource, action=action, enabled=True).first()
        if sep
        else None
    )
    if found is None:
        raise InvalidInput(
            f"There is no privilege {name!r} in the catalog (names look like 'resource:action').",
            code="unknown_privilege",
            fields={"privilege": ["Unknown privilege."]},
        )
    return found


def _held_live(agent_ids: Iterable[int], *, exclude_grant_id: int | None = None) -> tuple:
    """Every privilege the agents hold live, in any task: toxic pairs are judged on all of it
    (the agent and its delegation chain), not only on the task the agent chose to name."""
    now = timezone.now()
    grants = Grant.objects.filter(
        agent_id__in=list(agent_ids), revoked_at__isnull=True, expires_at__gt=now
    )
    if exclude_grant_id is not None:
        grants = grants.exclude(pk=exclude_grant_id)
    return tuple(sorted(set(grants.values_list("scope", flat=True))))


def _facts(
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
) -> policy.PolicyFacts:
    now = timezone.now()
    chain = chain or _chain_for(parent=None, agent=agent)
    return policy.PolicyFacts(
        agent_id=agent.spiffe_id,
        agent_name=agent.name,
        agent_status=agent.status,
        sponsor=agent.sponsor.get_username(),
        team=agent.team.name,
        privilege_name=privilege.name,
        resource=privilege.resource,
        action=privilege.action,
        risk=privilege.risk,
        risk_level=privilege.risk_level,
        max_duration_seconds=privilege.max_duration_seconds,
        approvals_required=privilege.approvals_required,
        toxic_with=tuple(
            f"{resource}:{action}"
            for resource, action in privilege.toxic_with.values_list("resource", "action")
        ),
        intent=intent,
        duration_seconds=duration_seconds,
        environment=str(context.get("environment", "")),
        hour_utc=now.hour,
        weekday=now.isoweekday(),
        initiated_by=initiated_by,
        held_privileges=_held_live(chain.agent_pks, exclude_grant_id=exclude_grant_id),
        is_extension=is_extension,
        delegation_depth=chain.depth,
        root_agent=chain.root_agent,
        root_approver=chain.root_approver,
        chain=chain.agents,
        crosses_sponsor=chain.crosses_sponsor,
    )


@dataclass(frozen=True)
class ChainFacts:
    depth: int
    root_agent: str
    root_approver: str
    agents: tuple[str, ...]
    crosses_sponsor: bool
    agent_pks: tuple[int, ...] = ()


def _chain_for(*, parent: Grant | None, agent: Agent) -> ChainFacts:
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


def _chain_agent_ids(parent: Grant | None, agent_id: int) -> list[int]:
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


def _is_toxic(privilege: Privilege) -> bool:
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


def _cumulative_limit(
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
        f"The agent has held {privilege.name} for {held} s in the last {window} s; with the "
        f"{duration_seconds} s asked for that is {held + duration_seconds} s, over the "
        f"{limit} s that may be granted automatically in that window "
        f"({factor:g} × the privilege's maximum of {privilege.max_duration_seconds} s), "
        "so people decide.",
        outcome.approvals_required,
    )


def grant_ancestors(grant: Grant) -> list[Grant]:
    """The grant and its parents up to the root, nearest first."""
    chain = [grant]
    while chain[-1].parent_id is not None:
        chain.append(
            Grant.objects.select_related("agent", "agent__sponsor").get(pk=chain[-1].parent_id)
        )
    return chain


def grant_approvers(grant: Grant) -> list[str]:
    """Who approved the grant's request, in order ("policy" for an automatic approval).
    Remembered on the instance: minting and its audit event both ask."""
    cached = getattr(grant, "_custody_approvers", None)
    if cached is not None:
        return cached
    approvers = (
        Decision.objects.filter(
            access_request_id=grant.access_request_id, verdict=Decision.Verdict.APPROVE
        )
        .order_by("created_at", "pk")
        .values_list("approver__username", "channel")
    )
    grant._custody_approvers = [username or channel for username, channel in approvers]
    return grant._custody_approvers


def _transition(access_request: AccessRequest, target: str, *, reason: str = "") -> None:
    if target not in AccessRequest.TRANSITIONS[access_request.status]:
        raise Conflict(
            f"Request #{access_request.pk} is already {access_request.status}.",
            code="request_not_pending",
        )
    access_request.status = target
    access_request.decided_at = timezone.now()
    access_request.final_reason = reason[:255]
    access_request.save(update_fields=["status", "decided_at", "final_reason"])


def _on_commit_request_finished(access_request_id: int) -> None:
    from approvals import channels

    transaction.on_commit(lambda: channels.request_finished(access_request_id))


# --- submit ------------------------------------------------------------------------------------


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
) -> SubmitResult:
    """An agent asks for a privilege; policy decides at once whether it is automatic,
    needs people, or is denied."""
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

    with transaction.atomic(), deferred_evidence():
        # Lock order step 1, first thing: the agent (and its delegation chain). A suspension
        # either committed before (its status is read again here) or waits for this request and
        # then ends its grant. A privilege in a toxic pair takes the agent exclusively, so two
        # halves of a pair are decided one after the other, each seeing what the other got.
        locked = lock_agents(
            _chain_agent_ids(parent_grant, agent.pk), exclusive=_is_toxic(privilege)
        )
        agent = locked[agent.pk]
        if agent.status != Agent.Status.ACTIVE:
            raise Conflict(
                f"Agent {agent.name} is {agent.status}; it gets no new privilege.",
                code="agent_not_active",
            )
        chain = _chain_for(parent=parent_grant, agent=agent)
        facts = _facts(
            agent=agent,
            privilege=privilege,
            intent=intent,
            duration_seconds=duration_seconds,
            context=context,
            task_id=task_id,
            initiated_by=initiated_by,
            is_extension=extension_of is not None,
            chain=chain,
        )
        compiled = policy.current_policies()
        outcome = _cumulative_limit(
            policy.decide(compiled, facts),
            agent_id=agent.pk,
            privilege=privilege,
            duration_seconds=duration_seconds,
        )
        now = timezone.now()
        deadline_seconds = privilege.decision_deadline_seconds
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
            created_at=now,
            decision_deadline=now + timedelta(seconds=deadline_seconds),
            escalation_at=now + timedelta(seconds=deadline_seconds // 2),
        )
        ids = {"agent_id": agent.pk, "access_request_id": access_request.pk}
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
            _transition(access_request, Status.DENIED, reason="denied by policy")
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
            _transition(access_request, Status.APPROVED, reason="approved by policy")
            result.grant = _grant_issue(access_request, actor=Actor.system("policy"))
            result.token = _token_issue(result.grant, actor=actor)
        else:
            from approvals import channels

            transaction.on_commit(lambda: channels.request_pending(access_request.pk))
    return result


# --- deciding ----------------------------------------------------------------------------------


def can_approve(user, access_request: AccessRequest) -> bool:
    """Sponsor, backup approvers (object permission) or the privilege's approver group.
    Superuser status grants nothing here: approval is a personal, accountable act."""
    if not user.is_authenticated or not user.is_active:
        return False
    agent = access_request.agent
    if "approve_for_agent" in get_user_perms(user, agent):
        return True
    if "approve_for_agent" in get_group_perms(user, agent):
        return True
    group_id = access_request.privilege.approver_group_id
    return group_id is not None and user.groups.filter(pk=group_id).exists()


def is_initiator(user, access_request: AccessRequest) -> bool:
    initiated_by = access_request.initiated_by.strip().lower()
    if not initiated_by:
        return False
    return initiated_by in {user.get_username().lower(), (user.email or "").lower()}


STEP_UP_WINDOW = timedelta(minutes=10)


def _fresh_login(authenticated_at) -> bool:
    return authenticated_at is not None and timezone.now() - authenticated_at <= STEP_UP_WINDOW


@dataclass
class DecideResult:
    decision: Decision
    access_request: AccessRequest
    grant: Grant | None = None


def access_request_decide(
    *,
    access_request_id: int,
    approver,
    verdict: str,
    channel: str,
    comment: str = "",
    idempotent: bool = False,
    authenticated_at=None,
) -> DecideResult:
    """One person's approve or deny. With `idempotent`, repeating one's own earlier verdict
    (a double click, a retried callback) returns that decision and records nothing new.
    Approving a critical request needs a login (`authenticated_at`) within STEP_UP_WINDOW."""
    if verdict not in Decision.Verdict.values:
        raise InvalidInput(
            "The verdict is 'approve' or 'deny'.",
            code="invalid_verdict",
            fields={"verdict": ["Use approve or deny."]},
        )
    refusal: Exception | None = None
    result: DecideResult | None = None
    with transaction.atomic(), deferred_evidence():
        # Lock order: the agent (shared: its status is only read), then the request, then the
        # parent grant, the chain head last — so a decision racing a suspension waits for it,
        # and one racing the agent's own submissions never waits on them.
        agent_id = (
            AccessRequest.objects.filter(pk=access_request_id)
            .values_list("agent_id", flat=True)
            .first()
        )
        if agent_id is not None:
            lock_agents([agent_id])
        access_request = (
            AccessRequest.objects.select_for_update(no_key=True, of=("self",))
            .select_related("agent", "agent__sponsor", "agent__team", "privilege")
            .filter(pk=access_request_id)
            .first()
        )
        if access_request is None:
            raise NotFound(f"There is no request #{access_request_id}.")
        if access_request.parent_grant_id is not None:
            # Before any audit write, as grant_end orders it: a parent ending concurrently
            # either ends first (the mint below sees it) or waits until this child exists.
            Grant.objects.select_for_update(no_key=True).filter(
                pk=access_request.parent_grant_id
            ).first()
        ids = {"agent_id": access_request.agent_id, "access_request_id": access_request.pk}
        who = Actor.for_user(approver)

        def refuse(error: Exception, why: str) -> None:
            nonlocal refusal
            record(
                actor=who,
                verb="decision.refused",
                **ids,
                data={
                    "why": why,
                    "verdict": verdict,
                    "channel": channel,
                    "status": access_request.status,
                },
            )
            refusal = error

        if not can_approve(approver, access_request):
            refuse(
                Forbidden("You may not decide requests for this agent.", code="not_an_approver"),
                "not_an_approver",
            )
        elif idempotent and (
            earlier := access_request.decisions.filter(approver=approver, verdict=verdict).first()
        ):
            result = DecideResult(earlier, access_request, getattr(access_request, "grant", None))
        elif (
            channel == Decision.Channel.SLACK
            and verdict == Decision.Verdict.APPROVE
            and RISK_LEVEL[access_request.privilege.risk]
            > RISK_LEVEL[access_request.privilege.slack_max_risk]
        ):
            refuse(
                Forbidden(
                    f"{access_request.privilege.risk.capitalize()} requests are approved in "
                    "Custody's web app, which can ask for a fresh login.",
                    code="approve_in_browser",
                ),
                "above_slack_risk",
            )
        elif not access_request.is_pending:
            refuse(
                Conflict(
                    f"Request #{access_request.pk} was already {access_request.status}.",
                    code="request_not_pending",
                ),
                "not_pending",
            )
        elif access_request.deadline_passed():
            _expire(access_request)
            refuse(
                Conflict(
                    f"Request #{access_request.pk} passed its deadline and expired.",
                    code="request_expired",
                ),
                "deadline_passed",
            )
        elif (
            verdict == Decision.Verdict.APPROVE
            and access_request.privilege.risk == "critical"
            and not _fresh_login(authenticated_at)
        ):
            refuse(
                Forbidden(
                    "Approving a critical request needs a login within the last "
                    f"{STEP_UP_WINDOW.seconds // 60} minutes; sign in again to confirm.",
                    code="step_up_required",
                ),
                "step_up_required",
            )
        elif is_initiator(approver, access_request):
            refuse(
                Forbidden(
                    "You initiated this request, so someone else must decide it.",
                    code="initiator_cannot_approve",
                ),
                "initiator",
            )
        elif access_request.decisions.filter(approver=approver).exists():
            refuse(
                Conflict("You have already decided this request.", code="already_decided"),
                "already_decided",
            )
        else:
            result = _record_decision(access_request, approver, verdict, channel, comment)
            if isinstance(result, Exception):
                refusal, result = result, None
    if refusal is not None:
        raise refusal
    return result


def _record_decision(access_request, approver, verdict, channel, comment):
    ids = {"agent_id": access_request.agent_id, "access_request_id": access_request.pk}
    who = Actor.for_user(approver)
    decision = Decision.objects.create(
        access_request=access_request,
        approver=approver,
        verdict=verdict,
        channel=channel,
        comment=comment[:2000],
    )
    record(
        actor=who,
        verb="decision.recorded",
        **ids,
        data={"verdict": verdict, "channel": channel, "comment": comment[:2000]},
    )
    if verdict == Decision.Verdict.DENY:
        _transition(access_request, Status.DENIED, reason=f"denied by {approver.get_username()}")
        record(actor=who, verb="request.denied", **ids, data={"channel": channel})
        _on_commit_request_finished(access_request.pk)
        return DecideResult(decision, access_request)
    approvals = access_request.decisions.filter(verdict=Decision.Verdict.APPROVE).count()
    if approvals < access_request.approvals_required:
        from approvals import channels

        transaction.on_commit(lambda: channels.request_updated(access_request.pk))
        return DecideResult(decision, access_request)
    # Final approval: mint in this transaction, re-checking the agent and the policy. The agent
    # row is already locked (shared) by access_request_decide: its status cannot move under us.
    agent = Agent.objects.get(pk=access_request.agent_id)
    if agent.status != Agent.Status.ACTIVE:
        return _refuse_grant(
            access_request,
            code="agent_not_active",
            reason=f"agent {agent.status} before grant",
            data={"agent_status": agent.status},
            message=f"The agent is {agent.status}; no grant was issued.",
        )
    parent = access_request.parent_grant
    if parent is not None and not parent.is_active():
        return _refuse_grant(
            access_request,
            code="parent_grant_not_active",
            reason="parent grant ended before grant",
            data={"parent_grant_id": parent.pk},
            message=f"Grant #{parent.pk}, which this delegates from, has ended; "
            "no grant was issued.",
        )
    outcome = policy.decide(policy.current_policies(), _facts_for_request(access_request))
    if outcome.outcome == "deny":
        return _refuse_grant(
            access_request,
            code="policy_denied",
            reason="policy denied at grant time",
            data={"policies": outcome.policy_ids, "reason": outcome.reason},
            message=f"Policy no longer allows this: {outcome.reason}",
            actor=Actor.system("policy"),
        )
    _transition(access_request, Status.APPROVED, reason=f"approved by {approvals} people")
    grant = _grant_issue(access_request, actor=who)
    _on_commit_request_finished(access_request.pk)
    return DecideResult(decision, access_request, grant)


def _refuse_grant(
    access_request, *, code: str, reason: str, data: dict, message: str, actor: Actor | None = None
) -> Conflict:
    """The final approval came, but no grant may be minted: the request ends denied, with
    evidence, and the approver is told why (409)."""
    _transition(access_request, Status.DENIED, reason=reason)
    record(
        actor=actor or Actor.system(),
        verb="grant.refused",
        agent_id=access_request.agent_id,
        access_request_id=access_request.pk,
        data={"why": code, **data},
    )
    _on_commit_request_finished(access_request.pk)
    return Conflict(message, code=code)


def _facts_for_request(access_request: AccessRequest, *, exclude_grant_id=None):
    return _facts(
        agent=access_request.agent,
        privilege=access_request.privilege,
        intent=access_request.intent,
        duration_seconds=access_request.duration_seconds,
        context=access_request.context,
        task_id=access_request.task_id,
        initiated_by=access_request.initiated_by,
        is_extension=access_request.extension_of_id is not None,
        chain=_chain_for(parent=access_request.parent_grant, agent=access_request.agent),
        exclude_grant_id=exclude_grant_id,
    )


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
            _transition(access_request, Status.CANCELLED, reason="cancelled by the agent")
            record(
                actor=Actor.for_agent(agent),
                verb="request.cancelled",
                agent_id=agent.pk,
                access_request_id=access_request.pk,
            )
            _on_commit_request_finished(access_request.pk)
    except Conflict as refusal:
        # The refusal's evidence commits on its own, after the rolled-back attempt.
        _agent_refusal_evidence(
            agent=agent,
            verb="request.cancel_refused",
            access_request_id=access_request_id,
            data={"why": refusal.code, "status": status_before},
        )
        raise
    return access_request


def _expire(access_request: AccessRequest) -> None:
    _transition(access_request, Status.EXPIRED, reason="no decision before the deadline")
    record(
        actor=Actor.system("deadline"),
        verb="request.expired",
        agent_id=access_request.agent_id,
        access_request_id=access_request.pk,
        data={"deadline": access_request.decision_deadline.isoformat()},
    )
    _on_commit_request_finished(access_request.pk)


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
        _expire(access_request)
        return True


# --- grants ------------------------------------------------------------------------------------


def _grant_issue(access_request: AccessRequest, *, actor: Actor) -> Grant:
    """The grant's clock starts now, at the final approval, never at the request."""
    now = timezone.now()
    expires_at = now + timedelta(seconds=access_request.duration_seconds)
    parent = access_request.parent_grant
    if parent is not None:
        if not parent.is_active(now):
            raise Conflict(
                f"Grant #{parent.pk}, which this delegates from, has ended.",
                code="parent_grant_not_active",
            )
        expires_at = min(expires_at, parent.expires_at)
    if access_request.extension_of_id is not None:
        first = first_of_extensions(access_request.extension_of)
        expires_at = min(
            expires_at,
            first.issued_at + timedelta(seconds=access_request.privilege.max_duration_seconds),
        )
        if expires_at <= now:
            raise Conflict(
                "The privilege's maximum, counted from the first grant, has passed.",
                code="extension_exceeds_maximum",
            )
    privilege = access_request.privilege
    grant = Grant.objects.create(
        agent=access_request.agent,
        privilege=privilege,
        access_request=access_request,
        parent=parent,
        depth=(parent.depth + 1) if parent else 0,
        task_id=access_request.task_id,
        scope=privilege.name,
        issued_at=now,
        expires_at=expires_at,
    )
    record(
        actor=actor,
        verb="grant.issued",
        agent_id=grant.agent_id,
        access_request_id=access_request.pk,
        grant_id=grant.pk,
        data={
            "privilege": privilege.name,
            "task_id": grant.task_id,
            "issued_at": now.isoformat(),
            "expires_at": expires_at.isoformat(),
            "approvers": grant_approvers(grant),
            "parent_grant_id": grant.parent_id,
        },
    )
    from approvals import channels

    transaction.on_commit(lambda: channels.grant_issued(grant.pk, expires_at))
    return grant


def _descendants(grant_ids: Iterable[int]) -> list[int]:
    found: list[int] = []
    frontier = list(grant_ids)
    while frontier:
        frontier = list(
            Grant.objects.filter(parent_id__in=frontier, revoked_at__isnull=True).values_list(
                "pk", flat=True
            )
        )
        found.extend(frontier)
    return found


def _record_endings(
    ended: list[tuple[Grant, str, int | None]], *, now, actor: Actor, detail: str = ""
) -> None:
    """Mark locked grants ended (one UPDATE per reason), record each, tell the channels after
    commit. `ended` holds (grant, reason, the grant it cascaded from)."""
    by_reason: dict[str, list[int]] = {}
    for ending, why, _ in ended:
        by_reason.setdefault(why, []).append(ending.pk)
        ending.revoked_at, ending.revoke_reason, ending.revoked_by = now, why, actor.id
    for why, pks in by_reason.items():
        Grant.objects.filter(pk__in=pks).update(
            revoked_at=now, revoke_reason=why, revoked_by=actor.id
        )
    for ending, why, cascade_from in ended:
        record(
            actor=actor,
            verb="grant.expired" if why == Reason.EXPIRED else "grant.revoked",
            agent_id=ending.agent_id,
            access_request_id=ending.access_request_id,
            grant_id=ending.pk,
            data={
                "reason": why,
                "detail": detail[:500],
                "expires_at": ending.expires_at,
                "held_seconds": round((now - ending.issued_at).total_seconds(), 3),
                "cascade_from": cascade_from,
            },
        )
    from approvals import channels

    ended_ids = [ending.pk for ending, _, _ in ended]
    request_ids = [ending.access_request_id for ending, _, _ in ended]
    transaction.on_commit(lambda: channels.grants_ended(request_ids))
    transaction.on_commit(lambda: delegations_cancel_orphaned(grant_ids=ended_ids))


def _lock_live_descendants(grant_ids: list[int]) -> list[Grant]:
    descendant_ids = _descendants(grant_ids)
    if not descendant_ids:
        return []
    return lock_in_pk_order(Grant.objects.filter(pk__in=descendant_ids, revoked_at__isnull=True))


def grant_end(*, grant_id: int, reason: str, actor: Actor, detail: str = "") -> bool:
    """End a grant and, in the same transaction, every grant delegated from it.

    Returns False when it had already ended (a rerun changes nothing)."""
    with transaction.atomic(), deferred_evidence():
        grant = Grant.objects.select_for_update(no_key=True).filter(pk=grant_id).first()
        if grant is None or grant.revoked_at is not None:
            return False
        now = timezone.now()
        if reason != Reason.EXPIRED and now >= grant.expires_at:
            reason = Reason.EXPIRED  # its time ran out first: say so
        ended = [(grant, reason, None)]
        ended += [(child, Reason.CASCADE, grant.pk) for child in _lock_live_descendants([grant.pk])]
        _record_endings(ended, now=now, actor=actor, detail=detail)
    return True


def grants_expire_due(*, limit: int = 500, grant_id: int | None = None) -> int:
    """End, in one transaction, up to `limit` grants whose time has come (or just `grant_id`
    if it has), with everything delegated from them. Grants another transaction is ending
    right now are skipped, not waited for. Returns how many grants expired (cascades aside).
    Idempotent: a rerun finds nothing due."""
    now = timezone.now()
    with transaction.atomic(), deferred_evidence():
        due = Grant.objects.filter(revoked_at__isnull=True, expires_at__lte=now)
        if grant_id is not None:
            due = due.filter(pk=grant_id)
        selected = list(
            due.select_for_update(no_key=True, skip_locked=True).order_by("expires_at", "pk")[
                :limit
            ]
        )
        if not selected:
            return 0
        children = _lock_live_descendants([grant.pk for grant in selected])
        cascading = {child.pk for child in children}
        # A due grant whose ancestor expires in this batch ends as a cascade from it.
        roots = [grant for grant in selected if grant.pk not in cascading]
        ended = [(grant, Reason.EXPIRED, None) for grant in roots]
        ended += [(child, Reason.CASCADE, child.parent_id) for child in children]
        _record_endings(ended, now=now, actor=Actor.system("expiry"))
    return len(roots)


def grant_revoke(*, grant: Grant, actor: Actor, detail: str = "") -> Grant:
    if not grant_end(grant_id=grant.pk, reason=Reason.REVOKED, actor=actor, detail=detail):
        raise Conflict(f"Grant #{grant.pk} has already ended.", code="grant_not_active")
    grant.refresh_from_db()
    return grant


def grant_complete(*, grant: Grant, agent: Agent) -> Grant:
    """The task is done: the privilege ends now."""
    if grant.agent_id != agent.pk:
        raise NotFound("Not found.")
    if not grant.is_active():
        grant_end(grant_id=grant.pk, reason=Reason.EXPIRED, actor=Actor.system("enforcement"))
        raise Conflict(f"Grant #{grant.pk} has already ended.", code="grant_not_active")
    if not grant_end(grant_id=grant.pk, reason=Reason.COMPLETED, actor=Actor.for_agent(agent)):
        raise Conflict(f"Grant #{grant.pk} has already ended.", code="grant_not_active")
    grant.refresh_from_db()
    return grant


def grant_expire(*, grant_id: int) -> bool:
    """Ends one grant whose time has come (with its descendants). Idempotent."""
    return grants_expire_due(grant_id=grant_id) > 0


def grants_revoke_for_agent(*, agent: Agent, actor: Actor, reason_detail: str = "") -> int:
    """Invariant 5: a suspended or retired agent keeps no grant and no pending request.

    Called with the agent row already locked (agents.services), then in the lock order: its
    pending requests, then its live grants (pk order) with what was delegated from them; the
    evidence is appended last. Ends whatever is live, even when the agent was already
    suspended: nothing may outlive the kill switch."""
    ended = 0
    with transaction.atomic(), deferred_evidence():
        for access_request in lock_in_pk_order(
            AccessRequest.objects.filter(agent=agent, status=Status.PENDING)
        ):
            _transition(access_request, Status.CANCELLED, reason=f"agent {agent.status}")
            record(
                actor=actor,
                verb="request.cancelled",
                agent_id=agent.pk,
                access_request_id=access_request.pk,
                data={"why": f"agent {agent.status}"},
            )
            _on_commit_request_finished(access_request.pk)
        for grant_id in (
            Grant.objects.filter(agent=agent, revoked_at__isnull=True)
            .order_by("pk")
            .values_list("pk", flat=True)
        ):
            ended += grant_end(
                grant_id=grant_id, reason=Reason.AGENT_SUSPENDED, actor=actor, detail=reason_detail
            )
    return ended


# --- tokens ------------------------------------------------------------------------------------


def _token_claims(grant: Grant) -> dict:
    access_request = grant.access_request
    ancestors = grant_ancestors(grant) if grant.parent_id else [grant]
    root = ancestors[-1]
    claims = {
        "sub": root.agent.spiffe_id,
        "aud": grant.privilege.resource,
        "scope": grant.scope,
        "task_id": grant.task_id,
        "grant_id": grant.pk,
        "authorization_details": [
            {
                "type": "custody_grant",
                "privilege": grant.scope,
                "request_id": access_request.pk,
                "grant_expires_at": int(grant.expires_at.timestamp()),
                "approvers": grant_approvers(grant),
                "policies": access_request.policy_ids,
            }
        ],
    }
    if grant.parent_id:
        # RFC 8693 §4.1: the current actor outermost, earlier actors nested inside.
        act = None
        for link in reversed(ancestors[:-1]):
            act = {"sub": link.agent.spiffe_id, **({"act": act} if act else {})}
        claims["act"] = act
    return claims


def _token_issue(grant: Grant, *, actor: Actor) -> IssuedToken:
    lifetime = settings.CUSTODY_ACCESS_TOKEN_SECONDS
    issued = token_sign(
        _token_claims(grant), lifetime_seconds=lifetime, not_after=int(grant.expires_at.timestamp())
    )
    record(
        actor=actor,
        verb="token.issued",
        agent_id=grant.agent_id,
        access_request_id=grant.access_request_id,
        grant_id=grant.pk,
        data={"jti": issued.jti, "exp": issued.expires_at, "scope": grant.scope},
    )
    return issued


def grant_token_refresh(*, grant: Grant, agent: Agent) -> IssuedToken:
    """A fresh short token while the grant lives, with policy evaluated again."""
    refusal = None
    with transaction.atomic():
        grant = (
            Grant.objects.select_for_update(no_key=True, of=("self",))
            .select_related("access_request", "privilege", "agent")
            .filter(pk=grant.pk, agent=agent)
            .first()
        )
        if grant is None:
            raise NotFound("Not found.")
        if not grant.is_active():
            refusal = Conflict(
                f"Grant #{grant.pk} has ended; ask for the privilege again.",
                code="grant_not_active",
            )
        else:
            access_request = grant.access_request
            outcome = policy.decide(
                policy.current_policies(),
                _facts_for_request(access_request, exclude_grant_id=grant.pk),
            )
            if outcome.outcome == "deny":
                refusal = Conflict(
                    f"Policy no longer allows this grant: {outcome.reason}", code="policy_denied"
                )
            else:
                return _token_issue(grant, actor=Actor.for_agent(agent))
    if refusal.code == "policy_denied":
        grant_end(
            grant_id=grant.pk,
            reason=Reason.POLICY,
            actor=Actor.system("policy"),
            detail=refusal.message,
        )
    elif grant.revoked_at is None:
        grant_expire(grant_id=grant.pk)
    _agent_refusal_evidence(
        agent=agent,
        verb="token.refused",
        grant=grant,
        data={"why": refusal.code, "ended_reason": grant.ended_reason},
    )
    raise refusal


def grant_token_for_response(*, grant: Grant, agent: Agent) -> IssuedToken | None:
    """A token to hand back with a request the agent is polling, if its grant is live."""
    if grant is None or not grant.is_active() or grant.agent_id != agent.pk:
        return None
    with transaction.atomic():
        return _token_issue(grant, actor=Actor.for_agent(agent))


INACTIVE = {"active": False}


def _agent_refusal_evidence(
    *, agent: Agent, verb: str, grant: Grant | None = None, data: dict, **ids
) -> None:
    """Evidence that an agent was refused, committed on its own. An agent can repeat a refused
    call at will, so each agent has its own per-minute budget per verb (the first are kept)."""
    if grant is not None:
        ids = {"access_request_id": grant.access_request_id, "grant_id": grant.pk, **ids}
    record_throttled(
        bucket=f"refused:{verb}:{agent.pk}",
        per_minute=settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE,
        actor=Actor.for_agent(agent),
        verb=verb,
        agent_id=agent.pk,
        data=data,
        **ids,
    )


def token_introspect(*, token: str, caller: Agent) -> dict:
    """RFC 7662: `active` only for a valid token whose grant, agent and policy all still hold.

    Only a registered resource server may introspect (403 otherwise), and it learns only about
    tokens addressed to an audience it serves: any other token is `active: false` to it, so one
    resource server cannot learn about another's tokens."""
    if not caller.is_resource_server:
        _agent_refusal_evidence(
            agent=caller, verb="introspection.forbidden", data={"why": "not_a_resource_server"}
        )
        raise Forbidden(
            "Only a registered resource server may introspect tokens; ask an admin to register "
            "this workload as one.",
            code="not_a_resource_server",
        )

    def refused(why: str, grant: Grant | None = None, **data) -> dict:
        _agent_refusal_evidence(
            agent=caller, verb="introspection.refused", grant=grant, data={"why": why, **data}
        )
        return INACTIVE

    try:
        claims = token_verify(token)
    except TokenInvalid:
        return refused("invalid_token")
    if not caller.may_introspect(claims.get("aud")):
        return refused("audience_not_served", aud=claims.get("aud"))
    grant = (
        Grant.objects.select_related(
            "agent",
            "agent__sponsor",
            "agent__team",
            "privilege",
            "access_request",
            "access_request__parent_grant",
        )
        .filter(pk=claims.get("grant_id"))
        .first()
    )
    if grant is None:
        return refused("unknown_grant")
    # The request's agent and privilege are the grant's: reuse the rows just read.
    grant.access_request.agent = grant.agent
    grant.access_request.privilege = grant.privilege
    if not grant.is_active():
        return refused("grant_ended", grant, ended_reason=grant.ended_reason)
    if grant.agent.status != Agent.Status.ACTIVE:
        return refused("agent_not_active", grant, agent_status=grant.agent.status)
    outcome = policy.decide(
        policy.current_policies(),
        _facts_for_request(grant.access_request, exclude_grant_id=grant.pk),
    )
    if outcome.outcome == "deny":
        grant_end(
            grant_id=grant.pk,
            reason=Reason.POLICY,
            actor=Actor.system("policy"),
            detail=outcome.reason,
        )
        return refused("policy_denied", grant)
    answer = {
        "active": True,
        "token_type": "access_token",
        "iss": claims["iss"],
        "sub": claims["sub"],
        "aud": claims.get("aud"),
        "scope": claims.get("scope"),
        "exp": claims["exp"],
        "iat": claims["iat"],
        "jti": claims["jti"],
        "grant_id": grant.pk,
        "task_id": grant.task_id,
        "agent": grant.agent.spiffe_id,
        "grant_expires_at": int(grant.expires_at.timestamp()),
    }
    if "act" in claims:
        answer["act"] = claims["act"]
    # The chain of custody, root first: who holds this privilege on whose behalf.
    answer["chain"] = [link.agent.spiffe_id for link in reversed(grant_ancestors(grant))]
    answer["delegation_depth"] = grant.depth
    return answer


# --- evidence of work done under a grant -------------------------------------------------------


def tool_call_record(
    *,
    grant: Grant,
    agent: Agent,
    tool: str,
    target: str,
    outcome: str,
    detail: dict | str | None = None,
):
    with transaction.atomic():
        grant = (
            Grant.objects.select_for_update(no_key=True).filter(pk=grant.pk, agent=agent).first()
        )
        if grant is None:
            raise NotFound("Not found.")
        if grant.is_active():
            data = {
                "tool": tool,
                "target": target,
                "outcome": outcome,
                "detail": detail,
                "scope": grant.scope,
            }
            if grant.parent_id is not None:
                # Accountability follows the delegation chain: every agent in it, root first.
                data["act"] = [link.agent.spiffe_id for link in reversed(grant_ancestors(grant))]
            return record(
                actor=Actor.for_agent(agent),
                verb="tool.called",
                agent_id=agent.pk,
                access_request_id=grant.access_request_id,
                grant_id=grant.pk,
                data=data,
            )
    _agent_refusal_evidence(
        agent=agent,
        verb="tool.refused",
        grant=grant,
        data={"why": "grant_not_active", "tool": tool, "target": target, "outcome": outcome},
    )
    raise Conflict(
        f"Grant #{grant.pk} has ended; tool calls under it are refused.", code="grant_not_active"
    )


# --- policy administration ---------------------------------------------------------------------


def policy_save(*, policy_row, actor: Actor, created: bool):
    """Validate against the schema, bump the version, keep the revision, move the generation."""
    try:
        policy.validate_policy_text(policy_row.text)
    except policy.PolicyTextError as exc:
        raise InvalidInput(
            "The policy does not validate: " + "; ".join(exc.errors),
            code="invalid_policy",
            fields={"text": exc.errors},
        )
    with transaction.atomic():
        if not created:
            policy_row.version = (
                type(policy_row)
                .objects.select_for_update(no_key=True)
                .get(pk=policy_row.pk)
                .version
                + 1
            )
        policy_row.updated_by = actor.id
        policy_row.save()
        PolicyRevision.objects.create(
            policy=policy_row,
            version=policy_row.version,
            text=policy_row.text,
            enabled=policy_row.enabled,
            created_by=actor.id,
        )
        _policy_generation_bump()
        record(
            actor=actor,
            verb="policy.created" if created else "policy.changed",
            data={
                "policy": policy_row.name,
                "version": policy_row.version,
                "enabled": policy_row.enabled,
                "text": policy_row.text,
            },
        )
    return policy_row


def _policy_generation_bump() -> None:
    """Every process rebuilds its compiled policy set at its next decision."""
    PolicySetState.objects.get_or_create(id=1)
    PolicySetState.objects.filter(id=1).update(generation=F("generation") + 1)


def policy_delete(*, policy_row, actor: Actor) -> None:
    with transaction.atomic():
        name, version = policy_row.name, policy_row.version
        policy_row.delete()
        _policy_generation_bump()
        record(actor=actor, verb="policy.deleted", data={"policy": name, "version": version})


def privilege_save(*, privilege, actor: Actor, created: bool):
    with transaction.atomic():
        privilege.save()
        record(
            actor=actor,
            verb="privilege.created" if created else "privilege.changed",
            data={
                "privilege": privilege.name,
                "risk": privilege.risk,
                "max_duration_seconds": privilege.max_duration_seconds,
                "approvals_required": privilege.approvals_required,
                "approver_group": privilege.approver_group.name
                if privilege.approver_group
                else None,
                "enabled": privilege.enabled,
            },
        )
    return privilege


# --- time: escalation, expiry notices, extensions ------------------------------------------------


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
                "approvals_received": access_request.decisions.filter(
                    verdict=Decision.Verdict.APPROVE
                ).count(),
                "approvals_required": access_request.approvals_required,
                "deadline": access_request.decision_deadline,
            },
        )
        from approvals import channels

        transaction.on_commit(lambda: channels.request_escalated(access_request_id))
    return True


def grant_expiry_notice(*, grant_id: int) -> bool:
    """Ten minutes before a long grant ends, its sponsor and team hear of it, once."""
    now = timezone.now()
    notice = timedelta(seconds=settings.CUSTODY_EXPIRY_NOTICE_SECONDS)
    with transaction.atomic():
        grant = Grant.objects.filter(pk=grant_id).first()
        if grant is None or not grant.is_active(now) or grant.expires_at - notice > now:
            return False
        long_enough = timedelta(seconds=settings.CUSTODY_EXPIRY_NOTICE_MIN_GRANT_SECONDS)
        if grant.expires_at - grant.issued_at < long_enough:
            return False
        claimed = Grant.objects.filter(pk=grant_id, expiry_notice_sent_at__isnull=True).update(
            expiry_notice_sent_at=now
        )
        if not claimed:
            return False
        record(
            actor=Actor.system("expiry"),
            verb="grant.expiry_notice",
            agent_id=grant.agent_id,
            access_request_id=grant.access_request_id,
            grant_id=grant.pk,
            data={"expires_at": grant.expires_at},
        )
        from approvals import channels

        transaction.on_commit(lambda: channels.grant_expiring(grant_id))
    return True


def first_of_extensions(grant: Grant) -> Grant:
    """The grant an extension chain started from: its issue time bounds every extension."""
    first = grant
    while first.access_request.extension_of_id is not None:
        first = Grant.objects.select_related("access_request").get(
            pk=first.access_request.extension_of_id
        )
    return first


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


def record_refusal(*, person, access_request_id: int, why: str, channel: str) -> None:
    """Evidence of a decision attempt that never reached a request the person may see."""
    record(
        actor=Actor.for_user(person),
        verb="decision.refused",
        access_request_id=access_request_id,
        data={"why": why, "channel": channel},
    )


# --- delegation: RFC 8693 token exchange -------------------------------------------------------

# Rejections of the actor token that are about the sub-agent itself, not about the token.
_TARGET_REJECTIONS = frozenset({"unknown_agent", "agent_suspended", "agent_retired"})
# The environment and the initiating person follow a chain down: a sub-agent cannot shed them.
_INHERITED_CONTEXT = ("environment", "initiated_by")


def _exchange_error(code: str, message: str, field: str) -> InvalidInput:
    return InvalidInput(message, code=code, fields={field: [message]})


def delegation_exchange(
    *,
    caller: Agent,
    subject_token: str,
    actor_token: str,
    intent: dict,
    scope: str = "",
    duration_seconds: int | None = None,
    task_id: str = "",
    context: dict | None = None,
) -> SubmitResult:
    """RFC 8693 token exchange: the holder of a live grant hands a narrower one to a sub-agent.

    `subject_token` is the parent grant's access token, held by `caller` (its `sub` is the root
    agent, so the holder is found through the grant); `actor_token` is the sub-agent's JWT-SVID.
    Attenuation is enforced here, whatever policy says:
    - scope: every space-separated privilege asked for is among the parent's (a grant holds one
      privilege today, so in practice the parent's own); omitted means the parent's;
    - expiry: `duration_seconds` may not exceed the parent's remaining time (refused, never
      clipped); omitted means all of it;
    - depth: for every agent already in the chain, the new link lies at most that agent's
      `max_delegation_depth` levels below it (for the root, that is the absolute depth), so each
      owner up the chain can only shorten how far its work is handed on;
    - the sub-agent is registered, active, and nowhere in the chain yet (no cycles).
    The new request belongs to the sub-agent, carries the parent grant, and is decided like any
    other (automatic, pending for the sub-agent's approvers, or denied). Refusals use the RFC
    8693/6749 codes (invalid_request, invalid_scope, invalid_target; access_denied, 403, when
    policy denies) and each leaves a `delegation.refused` event.
    """
    attempt: dict = {"parent_id": None, "sub_agent": None}
    try:
        result = _delegation_submit(
            caller=caller,
            subject_token=subject_token,
            actor_token=actor_token,
            intent=intent,
            scope=scope,
            duration_seconds=duration_seconds,
            task_id=task_id,
            context=context,
            attempt=attempt,
        )
    except (InvalidInput, Conflict) as error:
        sub_agent = attempt["sub_agent"]
        record(
            actor=Actor.for_agent(caller),
            verb="delegation.refused",
            agent_id=caller.pk,
            grant_id=attempt["parent_id"],
            data={
                "code": error.code,
                "message": error.message,
                "to_agent": sub_agent.spiffe_id if sub_agent else None,
                "scope": scope,
                "duration_seconds": duration_seconds,
            },
        )
        raise
    access_request = result.access_request
    if access_request.status == Status.DENIED:
        raise Forbidden(
            f"Policy denied delegation request #{access_request.pk}: "
            f"{access_request.policy_reason}",
            code="access_denied",
        )
    return result


def _delegation_submit(
    *,
    caller: Agent,
    subject_token: str,
    actor_token: str,
    intent: dict,
    scope: str,
    duration_seconds: int | None,
    task_id: str,
    context: dict | None,
    attempt: dict,
) -> SubmitResult:
    try:
        claims = token_verify(subject_token)
    except TokenInvalid as exc:
        raise _exchange_error(
            "invalid_request",
            f"The subject_token is not a valid Custody access token ({exc}).",
            "subject_token",
        )
    grant_id = claims.get("grant_id")
    attempt["parent_id"] = grant_id if isinstance(grant_id, int) else None
    # Outside the transaction: a trust domain's JWKS may have to be fetched over the network.
    # A delegation-audience token only, spent here: presented once, never again.
    try:
        sub_agent = verify_delegation_actor_token(actor_token).agent
    except IdentityRejected as rejected:
        code = "invalid_target" if rejected.reason in _TARGET_REJECTIONS else "invalid_request"
        raise _exchange_error(
            code, f"The actor_token was refused: {rejected.message}", "actor_token"
        )
    attempt["sub_agent"] = sub_agent

    with transaction.atomic():
        # Lock order: the agents first (the chain and the sub-agent, in the mode
        # access_request_submit takes them again below), then the parent grant.
        unlocked_parent = (
            Grant.objects.select_related("privilege").filter(pk=attempt["parent_id"]).first()
        )
        if unlocked_parent is not None:
            lock_agents(
                _chain_agent_ids(unlocked_parent, sub_agent.pk),
                exclusive=_is_toxic(unlocked_parent.privilege),
            )
        # Held to the end: the parent cannot end between these checks and the child's mint,
        # and grant_end, which locks it first, then finds the child to cascade to.
        parent = (
            Grant.objects.select_for_update(no_key=True, of=("self",))
            .select_related("agent", "agent__sponsor", "access_request")
            .filter(pk=attempt["parent_id"])
            .first()
        )
        now = timezone.now()
        if parent is None or not parent.is_active(now):
            raise _exchange_error(
                "invalid_request",
                "The subject_token's grant has ended; nothing can be delegated from it.",
                "subject_token",
            )
        if parent.agent_id != caller.pk:
            raise _exchange_error(
                "invalid_request",
                "Only the agent holding the subject_token's grant may delegate it.",
                "subject_token",
            )
        ancestors = grant_ancestors(parent)  # nearest first, the root last
        chain = [link.agent.spiffe_id for link in reversed(ancestors)]
        if sub_agent.pk in {link.agent_id for link in ancestors}:
            raise _exchange_error(
                "invalid_target",
                f"{sub_agent.spiffe_id} is already in this chain ({' -> '.join(chain)}); "
                "an agent cannot appear twice in its own chain.",
                "actor_token",
            )
        sub_agent = Agent.objects.get(pk=sub_agent.pk)  # locked above, with the chain
        if sub_agent.status != Agent.Status.ACTIVE:
            raise _exchange_error(
                "invalid_target", f"{sub_agent.spiffe_id} is {sub_agent.status}.", "actor_token"
            )

        held = parent.scope.split()
        asked = list(dict.fromkeys((scope or parent.scope).split()))
        if not set(asked) <= set(held):
            raise _exchange_error(
                "invalid_scope",
                f"A delegation may only narrow: grant #{parent.pk} holds {parent.scope!r}, "
                f"{scope!r} was asked for.",
                "scope",
            )
        if len(asked) != 1:
            raise _exchange_error("invalid_scope", "Delegate one privilege at a time.", "scope")
        # A delegated grant works on its parent's task: the same task id, or one nested under
        # it ("<parent task>/<sub-task>"), so a chain's work stays attributable to one task.
        task_id = task_id or parent.task_id
        if task_id != parent.task_id and not task_id.startswith(parent.task_id + "/"):
            raise _exchange_error(
                "invalid_request",
                f"A delegated grant works on its parent's task: task_id must be "
                f"{parent.task_id!r} or nest under it ('{parent.task_id}/...'); "
                f"{task_id!r} was asked for.",
                "task_id",
            )

        depth = parent.depth + 1
        for link in ancestors:
            below = depth - link.depth
            if below > link.agent.max_delegation_depth:
                raise _exchange_error(
                    "invalid_request",
                    f"{link.agent.spiffe_id} allows what it holds to be delegated at most "
                    f"{link.agent.max_delegation_depth} level(s) on; this would be {below}.",
                    "subject_token",
                )

        remaining = int((parent.expires_at - now).total_seconds())
        if duration_seconds is None:
            duration_seconds = remaining
        if remaining < 1:
            raise _exchange_error(
                "invalid_request", f"Grant #{parent.pk} is about to end.", "subject_token"
            )
        if duration_seconds > remaining:
            raise _exchange_error(
                "invalid_request",
                f"A delegation may not outlive its parent: grant #{parent.pk} has {remaining} s "
                f"left and {duration_seconds} s were asked for.",
                "duration_seconds",
            )

        inherited = parent.access_request.context or {}
        context = {
            **(context or {}),
            **{key: inherited[key] for key in _INHERITED_CONTEXT if key in inherited},
        }
        result = access_request_submit(
            agent=sub_agent,
            privilege_name=asked[0],
            task_id=task_id,
            duration_seconds=duration_seconds,
            intent=intent,
            context=context,
            parent_grant=parent,
        )
        access_request = result.access_request
        record(
            actor=Actor.for_agent(caller),
            verb="delegation.created",
            agent_id=sub_agent.pk,
            access_request_id=access_request.pk,
            grant_id=parent.pk,
            data={
                "from_agent": caller.spiffe_id,
                "to_agent": sub_agent.spiffe_id,
                "chain": [*chain, sub_agent.spiffe_id],
                "depth": depth,
                "scope": asked[0],
                "duration_seconds": duration_seconds,
                "crosses_sponsor": parent.agent.sponsor_id != sub_agent.sponsor_id,
                "outcome": access_request.policy_outcome,
                "status": access_request.status,
                "child_grant_id": result.grant.pk if result.grant else None,
            },
        )
    return result


def delegations_cancel_orphaned(*, grant_ids: Iterable[int]) -> int:
    """Runs after grants end: delegation requests from them that still wait for people are
    cancelled, so nobody is asked to hand down a privilege that no longer exists. (Approving
    one anyway is refused: the mint re-checks the parent under its lock.)"""
    cancelled = 0
    waiting = (
        AccessRequest.objects.filter(parent_grant_id__in=list(grant_ids), status=Status.PENDING)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for access_request_id in waiting:
        with transaction.atomic():
            access_request = (
                AccessRequest.objects.select_for_update(no_key=True)
                .filter(pk=access_request_id, status=Status.PENDING)
                .first()
            )
            if access_request is None:
                continue
            _transition(access_request, Status.CANCELLED, reason="parent grant ended")
            record(
                actor=Actor.system("cascade"),
                verb="request.cancelled",
                agent_id=access_request.agent_id,
                access_request_id=access_request.pk,
                data={
                    "why": "parent grant ended",
                    "parent_grant_id": access_request.parent_grant_id,
                },
            )
            _on_commit_request_finished(access_request.pk)
        cancelled += 1
    return cancelled
