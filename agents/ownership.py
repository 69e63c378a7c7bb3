"""Who owns an agent (invariant 13): the checks and the orphan flag's clearing that the
ownership services (agents/services.py) and the lifecycle sweeps (agents/lifecycle.py) share."""

from __future__ import annotations

from django.contrib.auth.models import Group

from agents.models import Agent
from audit.services import Actor, record
from core.errors import Conflict


def team_has_members(team: Group) -> bool:
    return team.user_set.filter(is_active=True).exists()


def team_refusal(team: Group | None, *, agent_name: str = "the agent") -> str | None:
    """Why this team cannot operate an agent (invariant 13: an active team), or None."""
    if team is None:
        return "An agent needs an operating team: the group of people who run it."
    if not team_has_members(team):
        return (
            f"The team {team.name} has no active member, so nobody would operate {agent_name} "
            "or take it over if its sponsor left. Add someone to the team first, or choose "
            "another team."
        )
    return None


def ownership_refusal(agent: Agent) -> str | None:
    """Why this agent may not be active (invariant 13), or None."""
    if agent.sponsor_id is None:
        return (
            f"{agent.name} cannot be active: its sponsor was deleted. Someone from its team "
            "takes ownership, or an admin names a new sponsor, first."
        )
    if not agent.sponsor.is_active:
        return (
            f"{agent.name} cannot be active: its sponsor {agent.sponsor_name} can no "
            "longer sign in. Someone from its team takes ownership, or an admin names a new "
            "sponsor, first."
        )
    if not team_has_members(agent.team):
        return (
            f"{agent.name} cannot be active: its team {agent.team.name} has no active member. "
            "An admin adds someone to the team, or moves the agent to another team, first."
        )
    if agent.orphaned_at is not None:
        return (
            f"{agent.name} cannot be active: it is orphaned "
            f"({agent.get_orphan_reason_display().lower()}). Someone from its team takes "
            "ownership, or an admin names a new sponsor or team, first."
        )
    return None


def clear_orphan_if_owned(agent: Agent, *, actor: Actor, how: str) -> bool:
    """Called with the agent row locked after an ownership change: an orphan whose sponsor can
    sign in and whose team has a member is owned again."""
    if agent.orphaned_at is None:
        return False
    if agent.sponsor_id is None or not agent.sponsor.is_active:
        return False
    if not team_has_members(agent.team):
        return False
    was = agent.orphan_reason
    agent.orphaned_at = None
    agent.orphan_reason = ""
    agent.save(update_fields=["orphaned_at", "orphan_reason"])
    record(
        actor=actor,
        verb="agent.orphan_cleared",
        agent_id=agent.pk,
        data={
            "how": how,
            "was": was,
            "sponsor": agent.sponsor_name,
            "team": agent.team.name,
        },
    )
    return True


def take_ownership_refusal(agent: Agent, person) -> Conflict | None:
    """Why `person` may not take ownership of `agent` (read under the agent's row lock)."""
    if agent.status == Agent.Status.RETIRED:
        return Conflict(f"{agent.name} is retired; nobody owns it again.", code="retired")
    if agent.orphaned_at is None:
        return Conflict(
            f"{agent.name} has an owner. Only an orphaned agent is taken over by its team; ask "
            "someone who manages approvers to reassign its sponsor.",
            code="not_orphaned",
        )
    if not person.is_active or not agent.team.user_set.filter(pk=person.pk).exists():
        return Conflict(
            f"Only a member of {agent.team.name}, {agent.name}'s team, may take ownership of it.",
            code="not_on_team",
        )
    return None
