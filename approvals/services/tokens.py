"""Access tokens: minting, refreshing with policy evaluated again, RFC 7662 introspection, and
the evidence of tool calls made under a grant."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import Subquery

from agents.models import Agent
from approvals import policy
from approvals.lineage import grant_ancestors
from approvals.models import (
    DriftFlag,
    Grant,
    PolicySetState,
)
from approvals.services.common import agent_refusal_evidence
from approvals.services.drift import (
    burst_flagged_in_window,
    calls_in_window,
    drift_decide,
    drift_end_grant,
    drift_flag_record,
    drift_flagged,
    drift_kinds,
)
from approvals.services.facts import introspection_read, request_policy_facts
from approvals.services.grants import grant_end, grant_expire
from approvals.tokens import IssuedToken, TokenInvalid, token_claims, token_sign, token_verify
from audit.services import Actor, record
from core.errors import Conflict, Forbidden, NotFound

Reason = Grant.RevokeReason


def token_issue(grant: Grant, *, actor: Actor) -> IssuedToken:
    lifetime = settings.CUSTODY_ACCESS_TOKEN_SECONDS
    issued = token_sign(
        token_claims(grant), lifetime_seconds=lifetime, not_after=int(grant.expires_at.timestamp())
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
                request_policy_facts(access_request, exclude_grant_id=grant.pk),
            )
            if outcome.outcome == "deny":
                refusal = Conflict(
                    f"Policy no longer allows this grant: {outcome.reason}", code="policy_denied"
                )
            else:
                return token_issue(grant, actor=Actor.for_agent(agent))
    if refusal.code == "policy_denied":
        grant_end(
            grant_id=grant.pk,
            reason=Reason.POLICY,
            actor=Actor.system("policy"),
            detail=refusal.message,
        )
    elif grant.revoked_at is None:
        grant_expire(grant_id=grant.pk)
    agent_refusal_evidence(
        agent=agent,
        verb="token.refused",
        grant=grant,
        data={"why": refusal.code, "ended_reason": grant.ended_reason},
    )
    raise refusal


INACTIVE = {"active": False}


def token_introspect(*, token: str, caller: Agent) -> dict:
    """RFC 7662: `active` only for a valid token whose grant, agent and policy all still hold.

    Only a registered resource server may introspect (403 otherwise), and it learns only about
    tokens addressed to an audience it serves: any other token is `active: false` to it, so one
    resource server cannot learn about another's tokens."""
    if not caller.is_resource_server:
        agent_refusal_evidence(
            agent=caller, verb="introspection.forbidden", data={"why": "not_a_resource_server"}
        )
        raise Forbidden(
            "Only a registered resource server may introspect tokens; ask an admin to register "
            "this workload as one.",
            code="not_a_resource_server",
        )

    def refused(why: str, grant: Grant | None = None, **data) -> dict:
        agent_refusal_evidence(
            agent=caller, verb="introspection.refused", grant=grant, data={"why": why, **data}
        )
        return INACTIVE

    try:
        claims = token_verify(token)
    except TokenInvalid:
        return refused("invalid_token")
    if not caller.may_introspect(claims.get("aud")):
        return refused("audience_not_served", aud=claims.get("aud"))
    # Continuous evaluation: grant state, agent status and every policy fact read fresh, now.
    read = introspection_read(claims.get("grant_id"))
    if read is None:
        return refused("unknown_grant")
    grant = read.grant
    if not grant.is_active():
        return refused("grant_ended", grant, ended_reason=grant.ended_reason)
    if grant.agent.status != Agent.Status.ACTIVE:
        return refused("agent_not_active", grant, agent_status=grant.agent.status)
    facts = read.facts or request_policy_facts(grant.access_request, exclude_grant_id=grant.pk)
    outcome = policy.decide_memoised(policy.policies_at(read.generation), facts)
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


def tool_call_record(
    *,
    grant: Grant,
    agent: Agent,
    tool: str,
    target: str,
    outcome: str,
    action: str = "",
    detail: dict | str | None = None,
):
    """Evidence of one tool call, compared with the grant's intent (see services/drift.py).

    Returns the `tool.called` event and the drift flag it raised (None when it kept to its
    intent)."""
    flag = None
    with transaction.atomic():
        grant = (
            Grant.objects.select_for_update(no_key=True)
            .select_related("privilege", "access_request", "agent")
            # The policy generation rides along: the drift set's cache check costs no query.
            .annotate(
                policy_generation=Subquery(
                    PolicySetState.objects.filter(id=1).values("generation")[:1]
                )
            )
            .filter(pk=grant.pk, agent=agent)
            .first()
        )
        if grant is None:
            raise NotFound("Not found.")
        if grant.is_active():
            call = {
                "tool": tool,
                "target": target,
                "outcome": outcome,
                "detail": detail,
                "scope": grant.scope,
            }
            if action:
                call["action"] = action
            if grant.parent_id is not None:
                # Accountability follows the delegation chain: every agent in it, root first.
                call["act"] = [link.agent.spiffe_id for link in reversed(grant_ancestors(grant))]
            event = record(
                actor=Actor.for_agent(agent),
                verb="tool.called",
                agent_id=agent.pk,
                access_request_id=grant.access_request_id,
                grant_id=grant.pk,
                data=call,
            )
            flag = _drift(
                grant,
                agent,
                tool,
                target,
                action,
                outcome,
                completed=False,
                generation=grant.policy_generation or 0,
            )
        else:
            event = None
    if event is not None:
        if flag is not None and flag.outcome == DriftFlag.Outcome.END:
            drift_end_grant(grant_id=grant.pk, flag=flag)
        return event, flag
    agent_refusal_evidence(
        agent=agent,
        verb="tool.refused",
        grant=grant,
        data={"why": "grant_not_active", "tool": tool, "target": target, "outcome": outcome},
    )
    if grant.revoke_reason == Grant.RevokeReason.COMPLETED:
        # The task said it was done, yet the agent still acts under it: that is drift too,
        # flagged once per grant (a flood of late calls must not flood the evidence).
        with transaction.atomic():
            locked = Grant.objects.select_for_update(no_key=True).filter(pk=grant.pk).first()
            if not drift_flagged(grant=locked, kind=DriftFlag.Kind.AFTER_COMPLETION):
                _drift(locked, agent, tool, target, action, outcome, completed=True)
    raise Conflict(
        f"Grant #{grant.pk} has ended; tool calls under it are refused.", code="grant_not_active"
    )


def _drift(grant, agent, tool, target, action, outcome, *, completed, generation=None):
    kinds = drift_kinds(grant=grant, tool=tool, target=target, action=action, completed=completed)
    calls = 0 if completed else calls_in_window(grant=grant)
    if calls > settings.CUSTODY_DRIFT_BURST and not burst_flagged_in_window(grant=grant):
        # One burst flag per window: the calls themselves are the evidence of its size.
        kinds.append(DriftFlag.Kind.BURST.value)
    # Every call goes to the drift policy (it may judge clean calls too); one Cedar call, ~0.1 ms.
    decision = drift_decide(
        grant=grant,
        tool=tool,
        target=target,
        action=action,
        outcome=outcome,
        kinds=kinds,
        calls=calls,
        generation=generation,
    )
    if decision.outcome == "allow":
        return None
    return drift_flag_record(
        grant=grant,
        actor=Actor.for_agent(agent),
        tool=tool,
        target=target,
        kinds=kinds,
        decision=decision,
    )
