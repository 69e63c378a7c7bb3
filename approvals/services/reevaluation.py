"""After a policy change: every live grant is decided again with the policy set now in force,
and each one it no longer permits ends (reason `policy_changed`) with everything delegated
from it — the same question a token refresh or an introspection asks, asked at once for all."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from approvals import policy
from approvals.models import Grant
from approvals.services.common import lock_agents
from approvals.services.facts import (
    chain_agent_ids,
    privilege_toxic_with,
    request_policy_facts,
)
from approvals.services.grants import grant_end_locked
from audit.services import Actor, deferred_evidence, record

Reason = Grant.RevokeReason


@dataclass
class Reevaluation:
    checked: int = 0
    ended: list[int] = field(default_factory=list)  # the grants the policy ended (not cascades)


def _decide_again(compiled: policy.CompiledPolicies, grant: Grant, **known) -> policy.PolicyOutcome:
    access_request = grant.access_request
    # The request's agent and privilege are the grant's: reuse the rows already read.
    access_request.agent = grant.agent
    access_request.privilege = grant.privilege
    facts = request_policy_facts(access_request, exclude_grant_id=grant.pk, **known)
    return policy.decide(compiled, facts)


def live_grants_denied(
    compiled: policy.CompiledPolicies, *, counter: Reevaluation | None = None
) -> Iterator[tuple[Grant, policy.PolicyOutcome]]:
    """The live grants `compiled` would deny now, in primary-key order (read without locks).
    Decided on the facts a token refresh uses, with what every agent holds read once."""
    now = timezone.now()
    grants = list(
        Grant.objects.live(now)
        .select_related(
            "agent",
            "agent__sponsor",
            "agent__team",
            "privilege",
            "access_request",
            "access_request__parent_grant",
        )
        .order_by("pk")
    )
    live_by_agent: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for grant in grants:
        live_by_agent[grant.agent_id].append((grant.pk, grant.scope))
    toxic: dict[int, tuple[str, ...]] = {}
    for grant in grants:
        if counter is not None:
            counter.checked += 1
        chain = chain_agent_ids(grant.access_request.parent_grant, grant.agent_id)
        held = {
            scope
            for agent_id in chain
            for grant_id, scope in live_by_agent.get(agent_id, ())
            if grant_id != grant.pk
        }
        if grant.privilege_id not in toxic:
            toxic[grant.privilege_id] = privilege_toxic_with(grant.privilege)
        outcome = _decide_again(
            compiled,
            grant,
            held_privileges=tuple(sorted(held)),
            toxic_with=toxic[grant.privilege_id],
        )
        if outcome.outcome == "deny":
            yield grant, outcome


def _end_if_denied(*, grant_id: int, actor: Actor, detail: str) -> bool:
    """In the lock order: the grant's agents (its delegation chain, shared), the grant, what
    was delegated from it, the audit chain head. Decided again under the locks: a grant that
    ended meanwhile, or that policy permits again, is left alone."""
    with transaction.atomic(), deferred_evidence():
        found = Grant.objects.filter(pk=grant_id).values_list("agent_id", "parent_id").first()
        if found is None:
            return False
        agent_id, parent_id = found
        parent = Grant.objects.filter(pk=parent_id).first() if parent_id else None
        lock_agents(chain_agent_ids(parent, agent_id))
        grant = (
            Grant.objects.select_for_update(no_key=True, of=("self",))
            .select_related("agent", "agent__sponsor", "agent__team", "privilege", "access_request")
            .filter(pk=grant_id)
            .first()
        )
        if grant is None or not grant.is_active():
            return False
        outcome = _decide_again(policy.current_policies(), grant)
        if outcome.outcome != "deny":
            return False
        grant_end_locked(
            grant=grant,
            reason=Reason.POLICY_CHANGED,
            actor=actor,
            detail=f"{detail}: {outcome.reason}",
        )
    return True


def grants_reevaluate(*, actor: Actor, detail: str) -> Reevaluation:
    """Decide every live grant again and end those the policy set in force no longer permits.
    Runs after the policy change committed (never inside it: grants are locked before other
    rows). Safe to run twice: a rerun finds nothing more to end."""
    result = Reevaluation()
    denied = list(live_grants_denied(policy.current_policies(), counter=result))
    for grant, _ in denied:
        if _end_if_denied(grant_id=grant.pk, actor=actor, detail=detail):
            result.ended.append(grant.pk)
    record(
        actor=actor,
        verb="policy.grants_reevaluated",
        data={"why": detail, "checked": result.checked, "ended": result.ended},
    )
    return result
