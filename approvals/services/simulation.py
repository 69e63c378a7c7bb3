"""What a policy change would do, before it goes live: the latest requests decided again with
the policy set in force and with the proposed one, the live grants the proposed set would end,
and a warning when it grants a high or critical privilege automatically.

Read-only: nothing here writes. Each request is decided through `policy.decide` on the facts
`facts.policy_facts` builds, like a submit, so outcomes and approval counts are computed the
one way Custody computes them. What cannot be known exactly any more is approximated, and
`APPROXIMATIONS` says how (the admin page shows it)."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings

from agents.models import Agent
from approvals import policy
from approvals.models import AccessRequest, Grant, Policy, Privilege
from approvals.services.facts import (
    chain_agent_ids,
    policy_facts,
    privilege_toxic_with,
    request_policy_facts,
)
from approvals.services.reevaluation import live_grants_denied

OUTCOMES = ("auto_approve", "request", "deny")

APPROXIMATIONS = (
    "Each request is decided again with what it stored: its agent, privilege, intent, context, "
    "duration, initiator and delegation chain, at the hour and weekday it was made, with the "
    "privileges the agent and its chain held live at that moment, and the agent active (only "
    "active agents' requests are recorded). The agent's sponsor and team and the privilege's "
    "risk, maximum duration and approvals are today's values. The cumulative time limit on "
    "automatic approvals is not applied (it depends on what was held in the day before each "
    "request), so a request it sent to people may show here as automatic under both sets. "
    "Outcomes are compared between the set in force and the proposed set, both decided on "
    "these same facts; the recorded outcome is shown beside them."
)

PROBE_METHOD = (
    "Checked against the catalog: every enabled high or critical privilege is asked for by up "
    "to {agents} active agents, not delegated, for 1 minute, 15 minutes and its maximum, in "
    "production and with no environment, at 10:00 on a Wednesday and 02:00 on a Sunday (UTC), "
    "holding nothing else; and every recent high or critical request is checked too. A policy "
    "that grants automatically only for particular intent text is caught only if a recent "
    "request had it. Delegation is not probed: it only hands on a narrower part of a grant the "
    "delegating agent already holds."
)
PROBE_AGENTS = 25


@dataclass(frozen=True)
class SimulatedRequest:
    access_request: AccessRequest
    current: policy.PolicyOutcome
    proposed: policy.PolicyOutcome

    @property
    def changed(self) -> bool:
        return (self.current.outcome, self.current.approvals_required) != (
            self.proposed.outcome,
            self.proposed.approvals_required,
        )


@dataclass(frozen=True)
class AutoApproveWarning:
    privilege: str
    risk: str
    policy_ids: list[str]
    example: str

    def __str__(self) -> str:
        by = ", ".join(self.policy_ids) or "no named policy"
        return (
            f"{self.privilege} ({self.risk} risk) would be granted automatically, by {by}: "
            f"{self.example}."
        )


@dataclass
class PolicySimulation:
    limit: int
    considered: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    changed: list[SimulatedRequest] = field(default_factory=list)
    drifted: int = 0  # the set in force, decided again, differs from what was recorded
    grants_ending: list[tuple[Grant, policy.PolicyOutcome]] = field(default_factory=list)
    warnings: list[AutoApproveWarning] = field(default_factory=list)
    approximations: str = APPROXIMATIONS
    probe_method: str = PROBE_METHOD.format(agents=PROBE_AGENTS)

    @property
    def count_rows(self) -> list[tuple[str, int, int, int]]:
        labels = dict(AccessRequest.Outcome.choices)
        return [
            (
                labels[outcome],
                self.counts["recorded"][outcome],
                self.counts["current"][outcome],
                self.counts["proposed"][outcome],
            )
            for outcome in OUTCOMES
        ]


def proposed_policies(
    *, policy_pk: int | None, name: str, text: str, enabled: bool
) -> policy.CompiledPolicies:
    """The enabled request policy set as it would be with this one (request) policy saved
    (`text` must be valid)."""
    rows = Policy.objects.filter(enabled=True, kind=Policy.Kind.REQUEST).order_by("name")
    if policy_pk is not None:
        rows = rows.exclude(pk=policy_pk)
    named = [(row_name, row_text) for row_name, row_text in rows.values_list("name", "text")]
    if enabled:
        named.append((name, text))
    return policy.compile_policies(sorted(named), generation=-1)


def policies_without(*, policy_pk: int) -> policy.CompiledPolicies:
    """The enabled request policy set as it would be with this policy deleted."""
    rows = (
        Policy.objects.filter(enabled=True, kind=Policy.Kind.REQUEST)
        .exclude(pk=policy_pk)
        .order_by("name")
    )
    return policy.compile_policies(list(rows.values_list("name", "text")), generation=-1)


class _History:
    """What every agent held when: the grants of the agents of `access_requests` (and their
    delegation chains) that overlap their time, read in one query."""

    def __init__(self, access_requests: list[AccessRequest]):
        self.chains = {
            access_request.pk: chain_agent_ids(access_request.parent_grant, access_request.agent_id)
            for access_request in access_requests
        }
        agent_ids = {agent_id for chain in self.chains.values() for agent_id in chain}
        self.grants: dict[int, list[tuple]] = defaultdict(list)
        if access_requests:
            oldest = min(access_request.created_at for access_request in access_requests)
            newest = max(access_request.created_at for access_request in access_requests)
            overlapping = Grant.objects.filter(
                agent_id__in=agent_ids, issued_at__lte=newest, expires_at__gt=oldest
            ).values_list(
                "agent_id", "access_request_id", "scope", "issued_at", "expires_at", "revoked_at"
            )
            for agent_id, *held in overlapping:
                self.grants[agent_id].append(held)
        self.toxic: dict[int, tuple[str, ...]] = {}

    def held_at(self, access_request: AccessRequest) -> tuple[str, ...]:
        """What the agent and its chain held live when it asked (its own grant aside)."""
        moment = access_request.created_at
        held = set()
        for agent_id in self.chains[access_request.pk]:
            for request_id, scope, issued_at, expires_at, revoked_at in self.grants[agent_id]:
                if (
                    request_id != access_request.pk
                    and issued_at <= moment < expires_at
                    and (revoked_at is None or revoked_at > moment)
                ):
                    held.add(scope)
        return tuple(sorted(held))

    def toxic_with(self, privilege: Privilege) -> tuple[str, ...]:
        if privilege.pk not in self.toxic:
            self.toxic[privilege.pk] = privilege_toxic_with(privilege)
        return self.toxic[privilege.pk]

    def facts(self, access_request: AccessRequest) -> policy.PolicyFacts:
        """The request's own facts (as a token refresh builds them), at the time it was made."""
        facts = request_policy_facts(
            access_request,
            held_privileges=self.held_at(access_request),
            toxic_with=self.toxic_with(access_request.privilege),
        )
        made = access_request.created_at
        return dataclasses.replace(
            facts, agent_status=Agent.Status.ACTIVE, hour_utc=made.hour, weekday=made.isoweekday()
        )


def _probes(privilege: Privilege, agents: list[Agent]) -> Iterator[tuple[policy.PolicyFacts, str]]:
    """Plausible requests for `privilege` (see PROBE_METHOD), each with how to say it."""
    longest = privilege.max_duration_seconds
    durations = sorted({min(60, longest), min(900, longest), longest})
    for agent in agents:
        for duration in durations:
            for environment in ("production", ""):
                base = policy_facts(
                    agent=agent,
                    privilege=privilege,
                    intent={},
                    duration_seconds=duration,
                    context={"environment": environment},
                    task_id="policy-simulation",
                    initiated_by="",
                )
                for hour, weekday in ((10, 3), (2, 7)):
                    where = f" in {environment}" if environment else ""
                    yield (
                        dataclasses.replace(
                            base,
                            hour_utc=hour,
                            weekday=weekday,
                            held_privileges=(),
                            # the policy's answer to an agent eligible for it
                            eligible=True,
                            eligibility_ended=False,
                            eligibility_max_duration_seconds=0,
                            eligibility_environment="",
                        ),
                        f"e.g. {agent.name} asking for {duration} s{where} at {hour:02d}:00 UTC",
                    )


def _probe_warnings(compiled: policy.CompiledPolicies) -> list[AutoApproveWarning]:
    agents = list(
        Agent.objects.filter(status=Agent.Status.ACTIVE)
        .select_related("sponsor", "team")
        .order_by("pk")[:PROBE_AGENTS]
    )
    warnings = []
    risky = Privilege.objects.filter(enabled=True, risk__in=["high", "critical"])
    for privilege in risky.order_by("resource", "action"):
        for facts, example in _probes(privilege, agents):
            outcome = policy.decide(compiled, facts)
            if outcome.outcome == "auto_approve":
                warnings.append(
                    AutoApproveWarning(privilege.name, privilege.risk, outcome.policy_ids, example)
                )
                break
    return warnings


def policy_change_simulate(
    *, proposed: policy.CompiledPolicies, limit: int | None = None
) -> PolicySimulation:
    """Decide the latest `limit` requests (CUSTODY_POLICY_SIMULATION_REQUESTS) with the set in
    force and with `proposed`; list the changes, the live grants `proposed` would end, and the
    high or critical privileges it would grant automatically."""
    limit = settings.CUSTODY_POLICY_SIMULATION_REQUESTS if limit is None else limit
    current = policy.current_policies()
    result = PolicySimulation(limit=limit)
    tallies = {column: Counter() for column in ("recorded", "current", "proposed")}
    latest = list(
        AccessRequest.objects.select_related(
            "agent", "agent__sponsor", "agent__team", "privilege", "parent_grant"
        ).order_by("-created_at", "-pk")[:limit]
    )
    history = _History(latest)
    warned: dict[str, AutoApproveWarning] = {}
    for access_request in latest:
        facts = history.facts(access_request)
        simulated = SimulatedRequest(
            access_request, policy.decide(current, facts), policy.decide(proposed, facts)
        )
        result.considered += 1
        tallies["recorded"][access_request.policy_outcome] += 1
        tallies["current"][simulated.current.outcome] += 1
        tallies["proposed"][simulated.proposed.outcome] += 1
        if simulated.current.outcome != access_request.policy_outcome:
            result.drifted += 1
        if simulated.changed:
            result.changed.append(simulated)
        privilege = access_request.privilege
        if (
            simulated.proposed.outcome == "auto_approve"
            and privilege.risk_level >= 3
            and privilege.name not in warned
        ):
            warned[privilege.name] = AutoApproveWarning(
                privilege=privilege.name,
                risk=privilege.risk,
                policy_ids=simulated.proposed.policy_ids,
                example=f"e.g. request #{access_request.pk} by {access_request.agent.name}",
            )
    result.counts = {
        column: {outcome: tally[outcome] for outcome in OUTCOMES}
        for column, tally in tallies.items()
    }
    for warning in _probe_warnings(proposed):
        warned.setdefault(warning.privilege, warning)
    result.warnings = sorted(warned.values(), key=lambda warning: warning.privilege)
    result.grants_ending = list(live_grants_denied(proposed))
    return result
