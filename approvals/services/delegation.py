"""Delegation: RFC 8693 token exchange, a narrower grant handed down to a sub-agent."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from agents.workload_identity import IdentityRejected, verify_delegation_actor_token
from approvals.lineage import grant_ancestors
from approvals.models import (
    AccessRequest,
    Grant,
)
from approvals.services.common import lock_agents
from approvals.services.facts import chain_agent_ids, is_toxic
from approvals.services.requests import SubmitResult, access_request_submit, flood_evidence
from approvals.tokens import TokenInvalid, token_verify
from audit.services import Actor, record
from core.errors import Conflict, Forbidden, InvalidInput, TooManyRequests

Status = AccessRequest.Status


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
    parent_id: int | None = None
    sub_agent: Agent | None = None
    try:
        parent_id = _subject_grant_id(subject_token)
        # Outside the transaction: a trust domain's JWKS may have to be fetched over the network.
        sub_agent = _actor_agent(actor_token)
        result = _delegation_submit(
            caller=caller,
            intent=intent,
            scope=scope,
            duration_seconds=duration_seconds,
            task_id=task_id,
            context=context,
            parent_id=parent_id,
            sub_agent=sub_agent,
        )
    except (InvalidInput, Conflict) as error:
        record(
            actor=Actor.for_agent(caller),
            verb="delegation.refused",
            agent_id=caller.pk,
            grant_id=parent_id,
            data={
                "code": error.code,
                "message": error.message,
                "to_agent": sub_agent.spiffe_id if sub_agent else None,
                "scope": scope,
                "duration_seconds": duration_seconds,
            },
        )
        raise
    except TooManyRequests as refusal:
        # Written here, once, after the delegation's transaction rolled back.
        flood_evidence(
            agent=sub_agent, refusal=refusal, privilege_name=scope, delegated_by=caller.spiffe_id
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


def _subject_grant_id(subject_token: str) -> int | None:
    """The grant the subject_token was minted for (None when its claim is not a grant id)."""
    try:
        claims = token_verify(subject_token)
    except TokenInvalid as exc:
        raise _exchange_error(
            "invalid_request",
            f"The subject_token is not a valid Custody access token ({exc}).",
            "subject_token",
        )
    grant_id = claims.get("grant_id")
    return grant_id if isinstance(grant_id, int) else None


def _actor_agent(actor_token: str) -> Agent:
    """The sub-agent the actor_token names. A delegation-audience token only, spent here:
    presented once, never again."""
    try:
        return verify_delegation_actor_token(actor_token).agent
    except IdentityRejected as rejected:
        code = "invalid_target" if rejected.reason in _TARGET_REJECTIONS else "invalid_request"
        raise _exchange_error(
            code, f"The actor_token was refused: {rejected.message}", "actor_token"
        )


def _delegation_submit(
    *,
    caller: Agent,
    intent: dict,
    scope: str,
    duration_seconds: int | None,
    task_id: str,
    context: dict | None,
    parent_id: int | None,
    sub_agent: Agent,
) -> SubmitResult:
    with transaction.atomic():
        # Lock order: the agents first (the chain and the sub-agent, in the mode
        # access_request_submit takes them again below), then the parent grant.
        unlocked_parent = Grant.objects.select_related("privilege").filter(pk=parent_id).first()
        if unlocked_parent is not None:
            lock_agents(
                chain_agent_ids(unlocked_parent, sub_agent.pk),
                exclusive=is_toxic(unlocked_parent.privilege),
            )
        # Held to the end: the parent cannot end between these checks and the child's mint,
        # and grant_end, which locks it first, then finds the child to cascade to.
        parent = (
            Grant.objects.select_for_update(no_key=True, of=("self",))
            .select_related("agent", "agent__sponsor", "access_request")
            .filter(pk=parent_id)
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
            flood_evidence_here=False,  # recorded below, after this transaction rolls back
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
