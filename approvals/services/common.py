"""What every service shares: the lock-order helpers, a request's state transition, and the
evidence of an agent's refused call."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from agents.models import Agent
from approvals import notifications
from approvals.models import (
    AccessRequest,
    Grant,
    Privilege,
)
from audit.services import Actor, record_throttled
from core import prepared
from core.errors import Conflict, InvalidInput
from core.raw_rows import columns, model_from_row

security_log = logging.getLogger("custody.security")

Status = AccessRequest.Status


Reason = Grant.RevokeReason


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
        return _share_lock_agents(ids)
    return {agent.pk: agent for agent in queryset}


def _share_lock_agents(ids: list[int]) -> dict[int, Agent]:
    """`FOR SHARE` and the re-read in one statement: the agents with their sponsor's username
    and their team's name (what policy facts read), only the agent rows locked."""
    from django.contrib.auth.models import Group

    user_model = Agent._meta.get_field("sponsor").related_model
    columns = ", ".join(f'a."{field.column}"' for field in Agent._meta.concrete_fields)
    width = len(Agent._meta.concrete_fields)
    with connection.cursor() as cursor:
        prepared.execute(
            cursor,
            f"SELECT {columns}, u.{user_model.USERNAME_FIELD}, t.name "  # noqa: S608
            f"FROM {Agent._meta.db_table} a "
            f"LEFT JOIN {user_model._meta.db_table} u ON u.id = a.sponsor_id "
            f"LEFT JOIN {Group._meta.db_table} t ON t.id = a.team_id "
            "WHERE a.id = ANY(%s) ORDER BY a.id FOR SHARE OF a",
            [ids],
        )
        rows = cursor.fetchall()
    agents = {}
    for row in rows:
        agent = model_from_row(Agent, row[:width])
        username, team_name = row[width:]
        if agent.sponsor_id is not None:
            agent.sponsor = user_model.from_db(
                connection.alias, ["id", user_model.USERNAME_FIELD], [agent.sponsor_id, username]
            )
        if agent.team_id is not None:
            agent.team = Group.from_db(connection.alias, ["id", "name"], [agent.team_id, team_name])
        agents[agent.pk] = agent
    return agents


# The first key of the policy-change advisory lock (PostgreSQL only).
_POLICY_CHANGE_LOCK = 0x504F4C49  # "POLI"


def policy_change_lock(*, exclusive: bool) -> None:
    """Decisions that may issue a grant (shared) and policy changes (exclusive) take turns, for
    the rest of the transaction: a grant decided under the old policy set commits before a
    change does, so the re-evaluation that follows the change sees it and ends it if the new
    set denies it. Shared holders never wait for each other. Taken before the policy set is
    read; a policy change takes it before any row."""
    if connection.vendor != "postgresql":
        return  # SQLite has one writer at a time
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s)", [_POLICY_CHANGE_LOCK])


def _privilege_with_pairs(resource: str, action: str) -> Privilege | None:
    """PostgreSQL: the enabled privilege and its toxic pairs (in name order), one statement."""
    table = Privilege._meta.db_table
    pairs = Privilege.toxic_with.through._meta.db_table
    with connection.cursor() as cursor:
        prepared.execute(
            cursor,
            f"SELECT {columns(Privilege, 'p')}, "  # noqa: S608
            f"ARRAY(SELECT o.resource || ':' || o.action FROM {pairs} t "
            f"JOIN {table} o ON o.id = t.to_privilege_id WHERE t.from_privilege_id = p.id "
            "ORDER BY o.resource, o.action) "
            f"FROM {table} p WHERE p.resource = %s AND p.action = %s AND p.enabled",
            [resource, action],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    privilege = model_from_row(Privilege, row[:-1])
    privilege.toxic_pairs = tuple(row[-1])
    return privilege


def privilege_by_name(name: str) -> Privilege:
    """The enabled privilege named 'resource:action'. On PostgreSQL its toxic pairs come in the
    same statement (`toxic_pairs`, which `facts.privilege_toxic_with` uses instead of a query of
    its own: a submission reads them once, here)."""
    resource, sep, action = (name or "").partition(":")
    found = None
    if sep and connection.vendor == "postgresql":
        found = _privilege_with_pairs(resource, action)
    elif sep:
        found = Privilege.objects.filter(resource=resource, action=action, enabled=True).first()
    if found is None:
        raise InvalidInput(
            f"There is no privilege {name!r} in the catalog (names look like 'resource:action').",
            code="unknown_privilege",
            fields={"privilege": ["Unknown privilege."]},
        )
    return found


def request_transition(access_request: AccessRequest, target: str, *, reason: str = "") -> None:
    if target not in AccessRequest.TRANSITIONS[access_request.status]:
        raise Conflict(
            f"Request #{access_request.pk} is already {access_request.status}.",
            code="request_not_pending",
        )
    access_request.status = target
    access_request.decided_at = timezone.now()
    access_request.final_reason = reason[:255]
    access_request.save(update_fields=["status", "decided_at", "final_reason"])


def on_commit_request_finished(access_request_id: int) -> None:
    notifications.request_finished(access_request_id)


def agent_refusal_evidence(
    *, agent: Agent, verb: str, grant: Grant | None = None, data: dict, **ids
) -> None:
    """Evidence that an agent was refused, committed on its own. An agent can repeat a refused
    call at will, so each agent has its own per-minute budget per verb (the first are kept)."""
    if grant is not None:
        ids = {"access_request_id": grant.access_request_id, "grant_id": grant.pk, **ids}
    security_log.warning(
        "Agent refused: %s (%s)",
        verb,
        data.get("why", ""),
        extra={"event": verb, "refused_agent": agent.spiffe_id, "why": data.get("why"), **ids},
    )
    record_throttled(
        bucket=f"refused:{verb}:{agent.pk}",
        per_minute=settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE,
        actor=Actor.for_agent(agent),
        verb=verb,
        agent_id=agent.pk,
        data=data,
        **ids,
    )
