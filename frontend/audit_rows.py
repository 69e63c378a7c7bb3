"""Audit events as people read them: actors and subjects by name, linked to their pages.

Names are resolved for a whole page at once (a few queries, however many rows), and only for
what the person may see: an agent outside their view keeps its raw id and gets no link."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db.models import Q
from django.urls import reverse

from agents.models import Agent
from agents.selectors import agents_visible_to, sees_whole_audit_log
from approvals.selectors import grants_visible_to
from audit.models import AuditEvent


@dataclass(frozen=True)
class Named:
    label: str
    url: str = ""
    kind: str = ""  # "agent", "request", "grant", "person", "system"


@dataclass
class AuditRow:
    event: AuditEvent
    actor: Named
    subjects: list[Named] = field(default_factory=list)


def _actor(event: AuditEvent, agents_by_spiffe: dict[str, Agent], visible: set[int]) -> Named:
    if event.actor_type == AuditEvent.ActorType.AGENT:
        agent = agents_by_spiffe.get(event.actor_id)
        if agent is None:
            return Named(event.actor_id, kind="agent")
        url = reverse("agent", args=[agent.pk]) if agent.pk in visible else ""
        return Named(agent.name, url, "agent")
    if event.actor_type == AuditEvent.ActorType.USER:
        return Named(event.actor_id, kind="person")
    if event.actor_id.startswith("unauthenticated:"):
        return Named(f"unauthenticated caller ({event.actor_id.partition(':')[2]})", kind="system")
    return Named("Custody" if event.actor_id == "custody" else event.actor_id, kind="system")


def audit_rows(events: Iterable[AuditEvent], user) -> list[AuditRow]:
    """A page of events with their actor and subjects named (a fixed number of queries)."""
    events = list(events)
    agent_ids = {event.agent_id for event in events if event.agent_id is not None}
    spiffe_ids = {
        event.actor_id for event in events if event.actor_type == AuditEvent.ActorType.AGENT
    }
    agents: list[Agent] = []
    if agent_ids or spiffe_ids:
        known = Agent.objects if sees_whole_audit_log(user) else agents_visible_to(user)
        agents = list(
            known.filter(Q(pk__in=agent_ids) | Q(spiffe_id__in=spiffe_ids)).only(
                "pk", "name", "spiffe_id"
            )
        )
    visible = (
        set(
            agents_visible_to(user)
            .filter(pk__in=[a.pk for a in agents])
            .values_list("pk", flat=True)
        )
        if agents
        else set()
    )
    by_pk = {agent.pk: agent for agent in agents}
    by_spiffe = {agent.spiffe_id: agent for agent in agents}
    grant_ids = {event.grant_id for event in events if event.grant_id is not None}
    grant_requests = (
        dict(
            grants_visible_to(user).filter(pk__in=grant_ids).values_list("pk", "access_request_id")
        )
        if grant_ids
        else {}
    )

    rows = []
    for event in events:
        subjects = []
        if event.agent_id is not None:
            agent = by_pk.get(event.agent_id)
            if agent is None:
                subjects.append(Named(f"agent {event.agent_id}", kind="agent"))
            else:
                url = reverse("agent", args=[agent.pk]) if agent.pk in visible else ""
                subjects.append(Named(agent.name, url, "agent"))
        if event.access_request_id is not None:
            subjects.append(
                Named(
                    f"request #{event.access_request_id}",
                    reverse("request", args=[event.access_request_id]),
                    "request",
                )
            )
        if event.grant_id is not None:
            request_id = grant_requests.get(event.grant_id)
            url = reverse("request", args=[request_id]) + "#grant-h" if request_id else ""
            subjects.append(Named(f"grant #{event.grant_id}", url, "grant"))
        rows.append(AuditRow(event, _actor(event, by_spiffe, visible), subjects))
    return rows
