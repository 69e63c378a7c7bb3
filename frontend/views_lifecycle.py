"""An agent's life in the web UI: its ownership history, orphan and dormant flags, and the
"take ownership" action for a member of an orphan's team (invariant 13)."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from agents import lifecycle
from agents.models import Agent
from agents.ownership import take_ownership_refusal
from agents.selectors import agent_ownership_history, agents_dormant_for, agents_orphaned_for
from audit.models import AuditEvent
from core.errors import DomainError
from frontend.decorators import login_required, object_permission_required

HISTORY_LIMIT = 50


@dataclass(frozen=True)
class OwnershipChange:
    event: AuditEvent
    who: str
    what: str


def _who(event: AuditEvent) -> str:
    if event.actor_type == AuditEvent.ActorType.USER:
        return event.actor_id
    return "Custody" if event.actor_id in ("custody", "") else f"Custody ({event.actor_id})"


def _what(event: AuditEvent) -> str:
    data = event.data or {}
    verb = event.verb
    if verb == "agent.registered":
        return f"Registered with sponsor {data.get('sponsor')} and team {data.get('team')}"
    if verb == "agent.sponsor_reassigned":
        if data.get("took_ownership"):
            return f"{data.get('to')} took ownership (sponsor was {data.get('from')})"
        return f"Sponsor changed from {data.get('from')} to {data.get('to')}"
    if verb == "agent.team_changed":
        return f"Team changed from {data.get('from')} to {data.get('to')}"
    if verb == "agent.orphaned":
        why = dict(Agent.OrphanReason.choices).get(data.get("reason"), data.get("reason"))
        return f"Orphaned: {str(why).lower()} (sponsor {data.get('sponsor')})"
    if verb == "agent.orphan_cleared":
        return f"Owned again: sponsor {data.get('sponsor')}, team {data.get('team')}"
    if verb == "agent.sponsor_deleted":
        return f"Sponsor {data.get('former_sponsor')} was deleted"
    if verb == "agent.ownership_refused":
        if data.get("why") == "empty_team":
            return f"Refused: moving it to team {data.get('team')}, which has no active member"
        return f"Refused: sponsor {data.get('sponsor')}, who cannot sign in"
    if verb == "approvers.backup_added":
        return f"{data.get('user')} became a backup approver"
    if verb == "approvers.backup_removed":
        return f"{data.get('user')} is no longer a backup approver"
    return verb


def ownership_history(agent: Agent) -> list[OwnershipChange]:
    return [
        OwnershipChange(event=event, who=_who(event), what=_what(event))
        for event in agent_ownership_history(agent)[:HISTORY_LIMIT]
    ]


def agent_lifecycle_context(user, agent: Agent) -> dict:
    deadline = agent.orphan_deadline()
    return {
        "history": ownership_history(agent),
        "orphan_deadline": deadline,
        "may_take_ownership": agent.orphaned_at is not None
        and take_ownership_refusal(agent, user) is None,
    }


def dashboard_lifecycle_context(user) -> dict:
    orphans = agents_orphaned_for(user)
    dormant = agents_dormant_for(user)
    return {
        "orphans": orphans[:10],
        "orphans_count": orphans.count(),
        "dormant": dormant[:10],
        "dormant_count": dormant.count(),
    }


@login_required
@require_POST
@object_permission_required(None, Agent, "agent_id")
def agent_take_ownership(request, agent: Agent):
    """A member of an orphan's team becomes its sponsor (and approver), audited."""
    try:
        agent = lifecycle.agent_take_ownership(agent=agent, person=request.user)
    except DomainError as refused:
        messages.warning(request, refused.message)
        return redirect("agent", agent_id=agent.pk)
    messages.success(
        request,
        f"You now sponsor {agent.name}: you approve its requests and answer for it.",
    )
    return redirect("agent", agent_id=agent.pk)
