"""An agent's whole life is owned (invariant 13): orphans, dormancy and their sweeps.

- Orphaned: its sponsor can no longer sign in (deactivated in admin, by a service, or by SSO
  deprovisioning), or its team's last member left. Flagged at once (`agent.orphaned`); its pending
  requests escalate to the backups and the team (approvals listens to `agent_flagged`); a team
  member takes ownership within CUSTODY_ORPHAN_GRACE_DAYS, or the sweep suspends it.
- Dormant: not authenticated for CUSTODY_DORMANT_AFTER_DAYS: flagged (`agent.dormant`), its
  sponsor told; authenticating clears the flag (`agent.dormancy_cleared`); after
  CUSTODY_DORMANT_SUSPEND_AFTER_DAYS the sweep suspends it.

Lock order: as agents/services.py: the agent row first (`FOR NO KEY UPDATE`), then what the
receivers take (requests, grants), the audit chain head last. The sweeps pick candidates without
locks, then re-check each one under its row lock, so a rerun (or a sweep racing a take-over or a
login) changes nothing twice.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents.models import Agent
from agents.ownership import clear_orphan_if_owned
from agents.services import _lock, agent_reassign_sponsor, agent_suspend, lock_team
from agents.signals import agent_flagged
from audit.services import Actor, record

SWEEP_BATCH = 200


def _days(n: int) -> timedelta:
    return timedelta(days=n)


# --- orphans -----------------------------------------------------------------------------------


def agent_orphan(*, agent_id: int, reason: str, actor: Actor) -> bool:
    """Flag one agent orphaned, once; its pending requests escalate in this transaction."""
    with transaction.atomic():
        agent = Agent.objects.select_for_update(no_key=True).filter(pk=agent_id).first()
        if agent is None or agent.status == Agent.Status.RETIRED or agent.orphaned_at:
            return False
        agent.orphaned_at = timezone.now()
        agent.orphan_reason = reason
        agent.save(update_fields=["orphaned_at", "orphan_reason"])
        record(
            actor=actor,
            verb="agent.orphaned",
            agent_id=agent.pk,
            data={
                "reason": reason,
                "sponsor": agent.sponsor_name,
                "team": agent.team.name,
                "suspend_after": agent.orphan_deadline(),
            },
        )
        agent_flagged.send(sender=Agent, agent=agent, actor=actor, flag="orphaned")
    return True


def agents_orphan_for_sponsor(*, sponsor, actor: Actor) -> int:
    """Every live agent this (no longer active) person sponsors becomes an orphan, now."""
    ids = (
        Agent.objects.filter(sponsor=sponsor, orphaned_at__isnull=True)
        .exclude(status=Agent.Status.RETIRED)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    return sum(
        agent_orphan(agent_id=pk, reason=Agent.OrphanReason.SPONSOR_INACTIVE, actor=actor)
        for pk in list(ids)
    )


def agents_orphan_for_empty_teams(*, team_ids, actor: Actor, leaving_user_id=None) -> int:
    """Each team among `team_ids` left with no active member (besides `leaving_user_id`, who is
    on the way out) orphans its live agents."""
    orphaned = 0
    for team in Group.objects.filter(pk__in=list(team_ids)).order_by("pk"):
        with transaction.atomic():
            orphaned += _orphan_if_team_empty(team, actor=actor, leaving_user_id=leaving_user_id)
    return orphaned


def _orphan_if_team_empty(team: Group, *, actor: Actor, leaving_user_id) -> int:
    # An agent registered or moved onto this team right now waits for us (or we for it).
    lock_team(team)
    members = team.user_set.filter(is_active=True)
    if leaving_user_id is not None:
        members = members.exclude(pk=leaving_user_id)
    if members.exists():
        return 0
    ids = (
        Agent.objects.filter(team=team, orphaned_at__isnull=True)
        .exclude(status=Agent.Status.RETIRED)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    return sum(
        agent_orphan(agent_id=pk, reason=Agent.OrphanReason.TEAM_EMPTY, actor=actor)
        for pk in list(ids)
    )


def agents_orphan_for_deleted_sponsor(*, sponsor, actor: Actor) -> int:
    """Called as a person is deleted, in the deletion's transaction, before the agents' sponsor
    column empties (SET_NULL): each agent they sponsor records who that was, and each live one
    is orphaned at once (its pending requests escalate), as for a deactivated sponsor."""
    username = sponsor.get_username()
    orphaned = 0
    ids = Agent.objects.filter(sponsor=sponsor).order_by("pk").values_list("pk", flat=True)
    for pk in list(ids):
        orphaned += agent_orphan(
            agent_id=pk, reason=Agent.OrphanReason.SPONSOR_DELETED, actor=actor
        )
        with transaction.atomic():
            agent = Agent.objects.select_for_update(no_key=True).get(pk=pk)
            if agent.orphan_reason == Agent.OrphanReason.SPONSOR_INACTIVE:
                # Orphaned when they were deactivated: the same grace period, a truer reason.
                agent.orphan_reason = Agent.OrphanReason.SPONSOR_DELETED
                agent.save(update_fields=["orphan_reason"])
            record(
                actor=actor,
                verb="agent.sponsor_deleted",
                agent_id=pk,
                data={
                    "former_sponsor": username,
                    "status": agent.status,
                    "orphaned_at": agent.orphaned_at,
                },
            )
    return orphaned


def agents_unorphan_for_sponsor(*, sponsor, actor: Actor) -> int:
    """A sponsor who can sign in again owns their orphans again (a deactivation undone)."""
    cleared = 0
    ids = Agent.objects.filter(
        sponsor=sponsor,
        orphan_reason=Agent.OrphanReason.SPONSOR_INACTIVE,
        orphaned_at__isnull=False,
    ).order_by("pk")
    for pk in list(ids.values_list("pk", flat=True)):
        with transaction.atomic():
            agent = Agent.objects.select_for_update(no_key=True).get(pk=pk)
            cleared += clear_orphan_if_owned(agent, actor=actor, how="sponsor_reactivated")
    return cleared


def agent_take_ownership(*, agent: Agent, person) -> Agent:
    """A member of an orphan's team makes themselves its sponsor, through the one reassignment
    service (which audits who may now approve). Only an orphan may be taken this way."""
    return agent_reassign_sponsor(
        agent=agent, sponsor=person, actor=Actor.for_user(person), take_ownership=True
    )


def agents_suspend_orphans(*, limit: int = SWEEP_BATCH) -> int:
    """Orphans nobody took over within the grace period are suspended (reason: orphaned)."""
    cutoff = timezone.now() - _days(settings.CUSTODY_ORPHAN_GRACE_DAYS)
    ids = list(
        Agent.objects.filter(status=Agent.Status.ACTIVE, orphaned_at__lte=cutoff)
        .order_by("orphaned_at")
        .values_list("pk", flat=True)[:limit]
    )
    suspended = 0
    for pk in ids:
        with transaction.atomic():
            agent = Agent.objects.select_for_update(no_key=True).get(pk=pk)
            # Re-checked under the lock: a take-over or a suspension may have come first.
            if agent.status != Agent.Status.ACTIVE or agent.orphaned_at is None:
                continue
            if agent.orphaned_at > cutoff:
                continue
            agent_suspend(
                agent=agent,
                actor=Actor.system("lifecycle"),
                reason=(
                    f"orphaned: nobody took ownership within "
                    f"{settings.CUSTODY_ORPHAN_GRACE_DAYS} days"
                ),
            )
            suspended += 1
    return suspended


# --- dormancy ----------------------------------------------------------------------------------


def _quiet_since(cutoff):
    """Active agents that have not authenticated since `cutoff` (never: since registration)."""
    return Agent.objects.filter(status=Agent.Status.ACTIVE).filter(
        Q(last_seen_at__lt=cutoff) | Q(last_seen_at__isnull=True, created_at__lt=cutoff)
    )


def agents_flag_dormant(*, limit: int = SWEEP_BATCH) -> int:
    """Flag (once) each active agent quiet for CUSTODY_DORMANT_AFTER_DAYS; its sponsor hears."""
    now = timezone.now()
    cutoff = now - _days(settings.CUSTODY_DORMANT_AFTER_DAYS)
    ids = list(
        _quiet_since(cutoff)
        .filter(dormant_at__isnull=True)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    flagged = 0
    for pk in ids:
        with transaction.atomic():
            # The conditional claim: a login since the query, or a concurrent sweep, wins.
            claimed = (
                _quiet_since(cutoff).filter(pk=pk, dormant_at__isnull=True).update(dormant_at=now)
            )
            if not claimed:
                continue
            agent = Agent.objects.select_related("sponsor", "team").get(pk=pk)
            record(
                actor=Actor.system("lifecycle"),
                verb="agent.dormant",
                agent_id=pk,
                data={
                    "last_seen": agent.last_seen_at,
                    "quiet_days": settings.CUSTODY_DORMANT_AFTER_DAYS,
                    "sponsor": agent.sponsor_name,
                    "suspend_after_days": settings.CUSTODY_DORMANT_SUSPEND_AFTER_DAYS,
                },
            )
            agent_flagged.send(
                sender=Agent, agent=agent, actor=Actor.system("lifecycle"), flag="dormant"
            )
            flagged += 1
    return flagged


def agents_suspend_dormant(*, limit: int = SWEEP_BATCH) -> int:
    """Dormant agents quiet for CUSTODY_DORMANT_SUSPEND_AFTER_DAYS are suspended."""
    cutoff = timezone.now() - _days(settings.CUSTODY_DORMANT_SUSPEND_AFTER_DAYS)
    ids = list(
        _quiet_since(cutoff)
        .filter(dormant_at__isnull=False)
        .order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )
    suspended = 0
    for pk in ids:
        with transaction.atomic():
            agent = _lock(Agent(pk=pk))
            if not _quiet_since(cutoff).filter(pk=pk, dormant_at__isnull=False).exists():
                continue  # it authenticated (or was suspended) since the query
            agent_suspend(
                agent=agent,
                actor=Actor.system("lifecycle"),
                reason=(
                    f"dormant: not authenticated for "
                    f"{settings.CUSTODY_DORMANT_SUSPEND_AFTER_DAYS} days"
                ),
            )
            suspended += 1
    return suspended


def agent_clear_dormancy(*, agent: Agent) -> bool:
    """It authenticated again: the flag goes, with evidence. Once (a conditional update)."""
    with transaction.atomic():
        cleared = Agent.objects.filter(pk=agent.pk, dormant_at__isnull=False).update(
            dormant_at=None
        )
        if cleared:
            record(
                actor=Actor.for_agent(agent),
                verb="agent.dormancy_cleared",
                agent_id=agent.pk,
                data={"flagged_at": agent.dormant_at},
            )
    agent.dormant_at = None
    return bool(cleared)


def agents_lifecycle_sweep() -> dict:
    """One pass of every lifecycle sweep; safe to run twice, or alongside another."""
    return {
        "orphans_suspended": agents_suspend_orphans(),
        "dormant_flagged": agents_flag_dormant(),
        "dormant_suspended": agents_suspend_dormant(),
    }
