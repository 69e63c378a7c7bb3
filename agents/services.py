"""Writes about agents: registration, ownership and lifecycle. Every one is audited."""

from __future__ import annotations

from datetime import date, timedelta

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from agents.models import Agent
from audit.services import Actor, deferred_evidence, record
from config.errors import Conflict

SPONSOR_PERMISSIONS = ("agents.view_agent", "agents.approve_for_agent", "agents.manage_agent")
TEAM_PERMISSIONS = ("agents.view_agent",)
DEFAULT_REVIEW_INTERVAL = timedelta(days=90)
LAST_SEEN_GRANULARITY = timedelta(seconds=60)


def _lock(agent: Agent) -> Agent:
    return Agent.objects.select_for_update().get(pk=agent.pk)


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
) -> Agent:
    agent = Agent(
        spiffe_id=spiffe_id,
        name=name,
        description=description,
        sponsor=sponsor,
        team=team,
        review_due=review_due or timezone.localdate() + DEFAULT_REVIEW_INTERVAL,
        max_delegation_depth=max_delegation_depth,
        oidc_trust_domain=oidc_trust_domain,
        oidc_subject=oidc_subject,
    )
    agent.full_clean()
    with transaction.atomic():
        try:
            with transaction.atomic():
                agent.save()
        except IntegrityError:  # registered concurrently since full_clean() looked
            raise ValidationError({"spiffe_id": "An agent with this SPIFFE ID already exists."})
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
            },
        )
    return agent


def agent_reassign_sponsor(*, agent: Agent, sponsor, actor: Actor) -> Agent:
    """The new sponsor becomes accountable and gains the sponsor's object permissions."""
    with transaction.atomic():
        agent = _lock(agent)
        previous = agent.sponsor
        if previous.pk == sponsor.pk:
            return agent
        for perm in SPONSOR_PERMISSIONS:
            remove_perm(perm, previous, agent)
            assign_perm(perm, sponsor, agent)
        agent.sponsor = sponsor
        agent.save(update_fields=["sponsor"])
        record(
            actor=actor,
            verb="agent.sponsor_reassigned",
            agent_id=agent.pk,
            data={"from": previous.get_username(), "to": sponsor.get_username()},
        )
    return agent


def agent_change_team(*, agent: Agent, team: Group, actor: Actor) -> Agent:
    with transaction.atomic():
        agent = _lock(agent)
        previous = agent.team
        if previous.pk == team.pk:
            return agent
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
    return agent


def _transition(agent: Agent, target: str, *, actor: Actor, verb: str, reason: str) -> Agent:
    with transaction.atomic(), deferred_evidence():
        agent = _lock(agent)
        if agent.status == target:
            return agent  # idempotent: a second kill-switch press changes nothing
        if target not in Agent.TRANSITIONS[agent.status]:
            raise Conflict(
                f"Agent {agent.name} is {agent.status}; it cannot become {target}.",
                code="invalid_transition",
            )
        previous = agent.status
        agent.status = target
        agent.status_changed_at = timezone.now()
        agent.save(update_fields=["status", "status_changed_at"])
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
    # Invariant 5: a suspended or retired agent holds no active grant, in the same transaction.
    from approvals.services import grants_revoke_for_agent

    grants_revoke_for_agent(agent=agent, actor=actor, reason_detail=reason)


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
    """Telemetry, not evidence: one conditional UPDATE a minute at most, no audit event."""
    now = timezone.now()
    if agent.last_seen_at and now - agent.last_seen_at < LAST_SEEN_GRANULARITY:
        return
    Agent.objects.filter(pk=agent.pk).exclude(last_seen_at__gt=now - LAST_SEEN_GRANULARITY).update(
        last_seen_at=now
    )
    agent.last_seen_at = now


EDITABLE_FIELDS = ("name", "description", "review_due", "max_delegation_depth")


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
