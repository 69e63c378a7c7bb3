"""Writes about agents: registration, ownership and lifecycle. Every one is audited.

Lock order: the one documented in approvals/services/__init__.py's docstring (and README,
"Security" → "Lock order"): agent row(s) first, then access requests, then grants, the audit
chain head last. Here the agent row is taken `FOR NO KEY UPDATE` first thing in every
transaction that changes it: it conflicts with the `FOR SHARE` that a submission or a decision
takes first thing, so the kill switch and agent traffic serialize, yet not with the `KEY SHARE`
of a foreign-key check at another transaction's COMMIT (taken after that transaction holds the
chain head).

Suspending or retiring an agent sends `agents.signals.agent_deactivated` with the agent row
locked; approvals' receiver ends its requests and grants in the same transaction (this app never
imports approvals).
"""

from __future__ import annotations

import threading
import zoneinfo
from contextlib import contextmanager
from datetime import date, timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from agents.models import Agent, BackupApprover, SponsorProfile, TrustDomain
from agents.ownership import (
    clear_orphan_if_owned,
    ownership_refusal,
    take_ownership_refusal,
    team_refusal,
)
from agents.signals import agent_deactivated
from agents.spiffe import parse_spiffe_id
from audit.services import Actor, deferred_evidence, record
from core.errors import Conflict, Forbidden, InvalidInput, NotFound

SPONSOR_PERMISSIONS = ("agents.view_agent", "agents.approve_for_agent", "agents.manage_agent")
TEAM_PERMISSIONS = ("agents.view_agent",)
BACKUP_APPROVER_PERMISSIONS = ("agents.view_agent", "agents.approve_for_agent")
LAST_SEEN_GRANULARITY = timedelta(seconds=60)


def _lock(agent: Agent) -> Agent:
    return Agent.objects.select_for_update(no_key=True).get(pk=agent.pk)


def lock_team(team: Group) -> None:
    """The team's row, taken before its members are counted: the last member leaving
    (agents/lifecycle.py) and an agent joining serialize, so neither misses the other. A joining
    agent's transaction takes it after that agent's row; the leaving side takes it (teams in pk
    order) before the rows of the agents already on the team, never the joining one: no cycle."""
    list(Group.objects.select_for_update(no_key=True).filter(pk=team.pk).values_list("pk"))


def ownership_change_refused(*, agent: Agent, actor: Actor, action: str, why: str, **data):
    """Evidence of an attempt to leave a live agent without an active sponsor or team."""
    record(
        actor=actor,
        verb="agent.ownership_refused",
        agent_id=agent.pk,
        data={"action": action, "why": why, **data},
    )


def sponsor_refusal(sponsor) -> str | None:
    """Why this person cannot sponsor an agent (the sponsor approves its requests), or None."""
    if sponsor is None or not getattr(sponsor, "is_authenticated", False) or sponsor.pk is None:
        return "An agent's sponsor is a registered person, not an anonymous visitor."
    if not sponsor.is_active:
        return (
            f"{sponsor.get_username()} is inactive and cannot sign in, so cannot sponsor "
            "(and approve for) an agent."
        )
    return None


def trust_domain_refusal(spiffe_id: str, oidc_trust_domain: TrustDomain | None = None):
    """Why this identity names no trust Custody has registered, or None. An agent that logs in
    with an OIDC token is vouched for by its (enabled) OIDC issuer; any other by the registered,
    enabled SPIFFE trust domain its SPIFFE ID names."""
    if oidc_trust_domain is not None:
        if not oidc_trust_domain.enabled:
            return f"The trust domain {oidc_trust_domain.name} is disabled."
        return None
    try:
        name = parse_spiffe_id(spiffe_id).trust_domain
    except ValidationError:
        return None  # the SPIFFE ID's own validator says what is wrong with it
    domain = TrustDomain.objects.filter(name=name, kind=TrustDomain.Kind.SPIFFE).first()
    if domain is None:
        return (
            f"The trust domain {name} is not registered: register it under Trust domains "
            "before its agents."
        )
    if not domain.enabled:
        return f"The trust domain {name} is disabled."
    return None


def agent_register(
    *,
    spiffe_id: str,
    name: str,
    sponsor,
    team: Group,
    actor: Actor,
    description: str = "",
    review_due: date | None = None,
    max_delegation_depth: int = 3,
    oidc_trust_domain=None,
    oidc_subject: str = "",
    kind: str = Agent.Kind.AGENT,
    introspection_audiences: list[str] | None = None,
) -> Agent:
    refusal = sponsor_refusal(sponsor)
    if refusal is not None:
        raise InvalidInput(refusal, code="inactive_sponsor", fields={"sponsor": [refusal]})
    refusal = team_refusal(team, agent_name=name or "the agent")
    if refusal is not None:
        raise InvalidInput(refusal, code="empty_team", fields={"team": [refusal]})
    # A retired SPIFFE ID registered again is a new agent, never the old one brought back: it
    # starts with no history of its own, and points at the incarnation before it.
    previous = (
        Agent.objects.filter(spiffe_id=spiffe_id, status=Agent.Status.RETIRED)
        .order_by("-pk")
        .first()
    )
    agent = Agent(
        previous_incarnation=previous,
        spiffe_id=spiffe_id,
        name=name,
        description=description,
        sponsor=sponsor,
        team=team,
        # Eligible for nothing yet: the "other" cadence (approvals shortens it with eligibility).
        review_due=review_due
        or timezone.localdate() + timedelta(days=settings.CUSTODY_REVIEW_DAYS_OTHER),
        max_delegation_depth=max_delegation_depth,
        oidc_trust_domain=oidc_trust_domain,
        oidc_subject=oidc_subject,
        kind=kind,
        introspection_audiences=introspection_audiences or [],
    )
    agent.full_clean()
    refusal = trust_domain_refusal(spiffe_id, oidc_trust_domain)
    if refusal is not None:
        raise InvalidInput(refusal, code="unknown_trust_domain", fields={"spiffe_id": [refusal]})
    with transaction.atomic():
        lock_team(team)
        if (refusal := team_refusal(team, agent_name=name)) is not None:
            raise InvalidInput(refusal, code="empty_team", fields={"team": [refusal]})
        try:
            with transaction.atomic():
                agent.save()
        except IntegrityError:  # registered concurrently since full_clean() looked
            raise ValidationError({"spiffe_id": "An agent with this SPIFFE ID already exists."})
        with _audited_here():  # the registration event names the sponsor
            for perm in SPONSOR_PERMISSIONS:
                assign_perm(perm, sponsor, agent)
            for perm in TEAM_PERMISSIONS:
                assign_perm(perm, team, agent)
        record(
            actor=actor,
            verb="agent.registered",
            agent_id=agent.pk,
            data={
                "spiffe_id": agent.spiffe_id,
                "name": agent.name,
                "sponsor": sponsor.get_username(),
                "team": team.name,
                "max_delegation_depth": agent.max_delegation_depth,
                "oidc_subject": agent.oidc_subject,
                "kind": agent.kind,
                "introspection_audiences": agent.introspection_audiences,
                **({"previous_incarnation": previous.pk} if previous else {}),
            },
        )
    return agent


def agent_reassign_sponsor(
    *, agent: Agent, sponsor, actor: Actor, take_ownership: bool = False
) -> Agent:
    """The new sponsor becomes accountable and gains the sponsor's object permissions, the right
    to approve among them; the event says whose approval rights moved. Nobody makes themselves
    the sponsor (callers check the 'manage approvers' permission of the person acting), with one
    exception: a member of an orphan's team takes ownership of it (`take_ownership`, checked
    under the row lock: only an orphan, only its team)."""
    refusal = sponsor_refusal(sponsor)
    if refusal is not None:
        if agent.status != Agent.Status.RETIRED:
            with transaction.atomic():
                ownership_change_refused(
                    agent=agent,
                    actor=actor,
                    action="sponsor_reassign",
                    why="inactive_sponsor",
                    sponsor=getattr(sponsor, "get_username", lambda: "")(),
                )
        raise Conflict(refusal, code="inactive_sponsor")
    if (
        not take_ownership
        and actor.type == "user"
        and actor.id == sponsor.get_username()
        and agent.sponsor_id != sponsor.pk
    ):
        refused = Forbidden(
            "Nobody can make themselves an agent's sponsor: the sponsor approves its requests.",
            code="self_grant",
        )
        with transaction.atomic():
            record(
                actor=actor,
                verb="approvers.change_refused",
                agent_id=agent.pk,
                data={
                    "action": "sponsor_reassign",
                    "user": sponsor.get_username(),
                    "why": refused.code,
                },
            )
        raise refused
    with transaction.atomic():
        agent = _lock(agent)
        if take_ownership:
            refused_takeover = take_ownership_refusal(agent, sponsor)
            if refused_takeover is not None:
                raise refused_takeover
        previous = agent.sponsor  # None once the sponsor was deleted
        if previous is not None and previous.pk == sponsor.pk:
            clear_orphan_if_owned(agent, actor=actor, how="sponsor_confirmed")
            return agent
        # A previous sponsor who is also a backup approver keeps approving as one.
        previous_is_backup = (
            previous is not None
            and BackupApprover.objects.filter(agent=agent, user=previous).exists()
        )
        sponsor_was_backup = BackupApprover.objects.filter(agent=agent, user=sponsor).exists()
        with _audited_here():
            for perm in SPONSOR_PERMISSIONS:
                if previous is not None and not (
                    previous_is_backup and perm in BACKUP_APPROVER_PERMISSIONS
                ):
                    remove_perm(perm, previous, agent)
                assign_perm(perm, sponsor, agent)
        agent.sponsor = sponsor
        agent.save(update_fields=["sponsor"])
        record(
            actor=actor,
            verb="agent.sponsor_reassigned",
            agent_id=agent.pk,
            data={
                "from": previous.get_username() if previous is not None else Agent.NO_SPONSOR,
                "to": sponsor.get_username(),
                # Who may approve changed with the sponsor: evidence says so in so many words.
                "approve_for_agent": {
                    "granted_to": [] if sponsor_was_backup else [sponsor.get_username()],
                    "revoked_from": []
                    if previous_is_backup or previous is None
                    else [previous.get_username()],
                },
                **({"took_ownership": True} if take_ownership else {}),
            },
        )
        clear_orphan_if_owned(
            agent, actor=actor, how="ownership_taken" if take_ownership else "sponsor_reassigned"
        )
    return agent


def agent_change_team(*, agent: Agent, team: Group, actor: Actor) -> Agent:
    """The agent moves to another operating team; a team with no active member is refused
    (invariant 13) unless the agent is retired, and the refusal is evidence."""
    refusal: Conflict | None = None
    with transaction.atomic():
        agent = _lock(agent)
        previous = agent.team
        if previous.pk == team.pk:
            return agent
        lock_team(team)
        if agent.status != Agent.Status.RETIRED and (
            why := team_refusal(team, agent_name=agent.name)
        ):
            refusal = Conflict(why, code="empty_team")
            ownership_change_refused(
                agent=agent, actor=actor, action="team_change", why="empty_team", team=team.name
            )
        else:
            with _audited_here():
                for perm in TEAM_PERMISSIONS:
                    remove_perm(perm, previous, agent)
                    assign_perm(perm, team, agent)
            agent.team = team
            agent.save(update_fields=["team"])
            record(
                actor=actor,
                verb="agent.team_changed",
                agent_id=agent.pk,
                data={"from": previous.name, "to": team.name},
            )
            clear_orphan_if_owned(agent, actor=actor, how="team_changed")
    if refusal is not None:
        raise refusal
    return agent


# --- who may approve ---------------------------------------------------------------------------
# Invariant 11: nobody gives themselves the right to approve, and every change of who may approve
# for an agent is evidence. The rights are guardian object permissions (what can_approve reads);
# they are written here and nowhere else. agents/receivers.py audits any change made elsewhere.

_permission_writes = threading.local()


@contextmanager
def _audited_here():
    """Object-permission writes inside this block are described by this module's own events;
    the catch-all receivers stand aside."""
    depth = getattr(_permission_writes, "depth", 0)
    _permission_writes.depth = depth + 1
    try:
        yield
    finally:
        _permission_writes.depth = depth


def permission_writes_audited_by_service() -> bool:
    return getattr(_permission_writes, "depth", 0) > 0


def may_manage_approvers(user, agent: Agent | None = None) -> bool:
    """Superusers, or the 'manage approvers' permission (model-wide, or on this agent).
    change_agent alone never suffices."""
    if not (user.is_authenticated and user.is_active):
        return False
    if user.is_superuser or user.has_perm("agents.manage_approvers"):
        return True
    return agent is not None and user.has_perm("agents.manage_approvers", agent)


def approval_rights_refusal(*, by, user=None, agent: Agent | None = None) -> Forbidden | None:
    """Why `by` may not make `user` (a person, or None for a group `by` is not in) an approver
    (for `agent`), or None if they may."""
    if user is not None and by.pk == user.pk:
        return Forbidden(
            "Nobody can give themselves the right to approve; ask another person who manages "
            "approvers.",
            code="self_grant",
        )
    if not may_manage_approvers(by, agent):
        return Forbidden(
            "Changing who may approve needs the 'manage approvers' permission.",
            code="not_an_approver_manager",
        )
    return None


def approvers_change_refused(
    *, by, user, action: str, error: Forbidden, agent: Agent | None = None, **data
) -> None:
    """Evidence of an attempt to change who may approve that was refused. `user` is the
    person (or a label such as `group:dba`) who would have gained the right."""
    who = user.get_username() if hasattr(user, "get_username") else str(user)
    record(
        actor=Actor.for_user(by),
        verb="approvers.change_refused",
        agent_id=agent.pk if agent is not None else None,
        data={"action": action, "user": who, "why": error.code, **data},
    )


def backup_approver_add(*, agent: Agent, user, by) -> BackupApprover:
    """`by` makes `user` a backup approver of `agent`: the row, guardian's approve_for_agent
    (and view_agent) object permissions and the event, together. A refusal is evidence too."""
    refusal: Forbidden | None = None
    with transaction.atomic():
        # Lock order: the agent first (no key lock: its key is not changing).
        agent = Agent.objects.select_for_update(no_key=True).get(pk=agent.pk)
        refusal = approval_rights_refusal(by=by, user=user, agent=agent)
        if refusal is not None:
            approvers_change_refused(
                by=by, user=user, action="backup_approver_add", error=refusal, agent=agent
            )
        else:
            if not user.is_active:
                raise Conflict(f"{user.get_username()} cannot sign in.", code="inactive_user")
            if user.pk == agent.sponsor_id:
                raise Conflict(
                    f"{user.get_username()} sponsors {agent.name} and approves already.",
                    code="already_sponsor",
                )
            if BackupApprover.objects.filter(agent=agent, user=user).exists():
                raise Conflict(
                    f"{user.get_username()} is already a backup approver of {agent.name}.",
                    code="already_backup_approver",
                )
            backup = BackupApprover.objects.create(agent=agent, user=user, added_by=by)
            with _audited_here():
                for perm in BACKUP_APPROVER_PERMISSIONS:
                    assign_perm(perm, user, agent)
            record(
                actor=Actor.for_user(by),
                verb="approvers.backup_added",
                agent_id=agent.pk,
                data={"user": user.get_username(), "grants": ["approve_for_agent", "view_agent"]},
            )
    if refusal is not None:
        raise refusal
    return backup


def backup_approver_remove(*, agent: Agent, user, by) -> None:
    """`by` removes `user` from `agent`'s backup approvers; from then on they cannot approve
    for it (unless they are its sponsor)."""
    refusal: Forbidden | None = None
    with transaction.atomic():
        agent = Agent.objects.select_for_update(no_key=True).get(pk=agent.pk)
        if not may_manage_approvers(by, agent):
            refusal = Forbidden(
                "Changing who may approve needs the 'manage approvers' permission.",
                code="not_an_approver_manager",
            )
            approvers_change_refused(
                by=by, user=user, action="backup_approver_remove", error=refusal, agent=agent
            )
        else:
            deleted, _ = BackupApprover.objects.filter(agent=agent, user=user).delete()
            if not deleted:
                raise NotFound(f"{user.get_username()} is not a backup approver of {agent.name}.")
            if user.pk != agent.sponsor_id:  # a sponsor keeps the sponsor's permissions
                with _audited_here():
                    for perm in BACKUP_APPROVER_PERMISSIONS:
                        remove_perm(perm, user, agent)
            record(
                actor=Actor.for_user(by),
                verb="approvers.backup_removed",
                agent_id=agent.pk,
                data={"user": user.get_username(), "revokes": ["approve_for_agent", "view_agent"]},
            )
    if refusal is not None:
        raise refusal


def approver_group_membership_record(
    *,
    user,
    group: Group,
    added: bool,
    actor: Actor,
    agent_ids=(),
    privileges=(),
) -> None:
    """A person joined or left a group that confers the right to approve: for each agent on
    which the group holds approve_for_agent, and once for the privileges it approves."""
    verb = "approvers.group_member_added" if added else "approvers.group_member_removed"
    base = {"user": user.get_username(), "group": group.name}
    for agent_id in sorted(agent_ids):
        record(actor=actor, verb=verb, agent_id=agent_id, data={**base, "via": "agent_permission"})
    if privileges:
        record(
            actor=actor,
            verb=verb,
            data={**base, "via": "privilege_approver_group", "privileges": sorted(privileges)},
        )


def approver_permission_changed_record(
    *, agent_id: int, holder: str, permission: str, added: bool, actor: Actor
) -> None:
    """An approval right written outside this module (a shell, a bulk tool): never silent."""
    record(
        actor=actor,
        verb="approvers.permission_assigned" if added else "approvers.permission_removed",
        agent_id=agent_id,
        data={"holder": holder, "permission": permission},
    )


def approver_managers_changed_record(*, holder: str, added: bool, actor: Actor) -> None:
    record(
        actor=actor,
        verb="approvers.manager_added" if added else "approvers.manager_removed",
        data={"holder": holder, "permission": "manage_approvers"},
    )


def _transition(agent: Agent, target: str, *, actor: Actor, verb: str, reason: str) -> Agent:
    with transaction.atomic(), deferred_evidence():
        agent = _lock(agent)
        if agent.status == target:
            # A second press records no second transition, yet still ends anything live: the
            # kill switch never leaves a grant standing, whatever came before it.
            if target != Agent.Status.ACTIVE:
                _end_privileges(agent, actor=actor, reason=reason)
            return agent
        if target not in Agent.TRANSITIONS[agent.status]:
            raise Conflict(
                f"Agent {agent.name} is {agent.status}; it cannot become {target}.",
                code="invalid_transition",
            )
        if target == Agent.Status.ACTIVE and (unowned := ownership_refusal(agent)):
            raise Conflict(unowned, code="unowned")
        previous = agent.status
        agent.status = target
        agent.status_changed_at = timezone.now()
        fields = ["status", "status_changed_at"]
        if target == Agent.Status.ACTIVE and agent.dormant_at is not None:
            # Brought back on purpose: its quiet days start again from now.
            agent.dormant_at = None
            agent.last_seen_at = agent.status_changed_at
            fields += ["dormant_at", "last_seen_at"]
        agent.save(update_fields=fields)
        record(
            actor=actor,
            verb=verb,
            agent_id=agent.pk,
            data={"from": previous, "to": target, "reason": reason},
        )
        if target != Agent.Status.ACTIVE:
            _end_privileges(agent, actor=actor, reason=reason)
    return agent


def _end_privileges(agent: Agent, *, actor: Actor, reason: str) -> None:
    # Invariant 5: a suspended or retired agent holds no active grant, in the same transaction:
    # approvals ends them in its receiver (agents/signals.py), under the agent row lock held here.
    agent_deactivated.send(
        sender=Agent, agent=agent, actor=actor, detail=reason, status=agent.status
    )


def agent_suspend(*, agent: Agent, actor: Actor, reason: str = "") -> Agent:
    """The kill switch: the agent stops authenticating and every grant it holds ends now."""
    return _transition(
        agent, Agent.Status.SUSPENDED, actor=actor, verb="agent.suspended", reason=reason
    )


def agent_reactivate(*, agent: Agent, actor: Actor, reason: str = "") -> Agent:
    return _transition(
        agent, Agent.Status.ACTIVE, actor=actor, verb="agent.reactivated", reason=reason
    )


def agent_retire(*, agent: Agent, actor: Actor, reason: str = "") -> Agent:
    return _transition(
        agent, Agent.Status.RETIRED, actor=actor, verb="agent.retired", reason=reason
    )


def agent_mark_seen(*, agent: Agent) -> None:
    """Telemetry, not evidence: one conditional UPDATE a minute at most, no audit event; except
    that a dormant agent authenticating again clears its flag, with evidence."""
    if agent.dormant_at is not None:
        from agents.lifecycle import agent_clear_dormancy  # lifecycle builds on this module

        agent_clear_dormancy(agent=agent)
    now = timezone.now()
    if agent.last_seen_at and now - agent.last_seen_at < LAST_SEEN_GRANULARITY:
        return
    # Its own short transaction, and it skips a row another transaction holds (a suspension, a
    # submission): telemetry never waits in the lock order, and never holds a lock in it.
    with transaction.atomic():
        free = (
            Agent.objects.select_for_update(no_key=True, skip_locked=True)
            .filter(pk=agent.pk)
            .exclude(last_seen_at__gt=now - LAST_SEEN_GRANULARITY)
            .values_list("pk", flat=True)
        )
        if free:
            Agent.objects.filter(pk=agent.pk).update(last_seen_at=now)
    agent.last_seen_at = now


EDITABLE_FIELDS = (
    "name",
    "description",
    "review_due",
    "max_delegation_depth",
    "kind",
    "introspection_audiences",
)


def agent_update(*, agent: Agent, actor: Actor, **changes) -> Agent:
    """Descriptive fields only; ownership and status have their own audited services."""
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"agent_update cannot change {sorted(unknown)}")
    with transaction.atomic():
        agent = _lock(agent)
        changed = {
            name: {"from": getattr(agent, name), "to": value}
            for name, value in changes.items()
            if getattr(agent, name) != value
        }
        if not changed:
            return agent
        for name in changed:
            setattr(agent, name, changes[name])
        agent.full_clean()
        agent.save(update_fields=list(changed))
        record(actor=actor, verb="agent.updated", agent_id=agent.pk, data={"changes": changed})
    return agent


def trust_domain_save(*, domain, actor: Actor, created: bool):
    """Registering or changing who may vouch for agents is evidence too."""
    with transaction.atomic():
        domain.full_clean()
        domain.save()
        record(
            actor=actor,
            verb="trust_domain.registered" if created else "trust_domain.changed",
            data={
                "trust_domain": domain.name,
                "kind": domain.kind,
                "issuer": domain.issuer,
                "jwks_url": domain.jwks_url,
                "enabled": domain.enabled,
                "kids": [k.get("kid") for k in (domain.jwks or {}).get("keys", [])],
            },
        )
    return domain


def time_zone_refusal(time_zone: str) -> str | None:
    """Why this is not a time zone Custody can show times in (an IANA name), or None."""
    if time_zone not in zoneinfo.available_timezones():
        return f"{time_zone!r} is not a time zone name such as Europe/Paris or America/New_York."
    return None


def sponsor_profile_set_time_zone(*, user, time_zone: str, actor: Actor):
    """The zone a person reads times in; the person or an admin sets it."""
    refusal = time_zone_refusal(time_zone)
    if refusal:
        raise InvalidInput(refusal, fields={"time_zone": [refusal]})
    with transaction.atomic():
        profile, _ = SponsorProfile.objects.select_for_update().get_or_create(user=user)
        if profile.time_zone == time_zone:
            return profile
        before = profile.time_zone
        profile.time_zone = time_zone
        profile.save(update_fields=["time_zone"])
        record(
            actor=actor,
            verb="profile.time_zone_changed",
            data={"person": user.get_username(), "from": before, "to": time_zone},
        )
    return profile
