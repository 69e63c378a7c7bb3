"""Who decides a request: one rule, asked for one person (`may_approve`, what the decision
service enforces) or answered for a whole page of requests at once (`approval_progress`, what
the web pages, Slack and the people's API show).

The rule: an active person holding `approve_for_agent` on the request's agent (as sponsor,
backup approver, or through a group), or in the privilege's approver group. Superuser status
grants nothing. The person who initiated the request never decides it, and each person decides
once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import get_group_perms, get_user_perms

from agents.models import Agent
from approvals import policy
from approvals.models import AccessRequest, Decision

APPROVE = "approve_for_agent"

# The sentences a person reads when they may not decide: the service's refusals and the pages'
# explanations use the same words.
NOT_AN_APPROVER = "You may not decide requests for this agent."
INITIATOR = "You initiated this request, so someone else must decide it."
ALREADY_DECIDED = "You have already decided this request."


def may_approve(user, access_request: AccessRequest) -> bool:
    """Whether the person holds the right to decide this request (initiator and earlier
    decisions aside: the decision service checks those with their own refusals)."""
    if not user.is_authenticated or not user.is_active:
        return False
    agent = access_request.agent
    if APPROVE in get_user_perms(user, agent):
        return True
    if APPROVE in get_group_perms(user, agent):
        return True
    group_id = access_request.privilege.approver_group_id
    return group_id is not None and user.groups.filter(pk=group_id).exists()


def initiated(initiated_by: str, username: str, email: str) -> bool:
    """The request's `initiated_by` names this person (by username or email)."""
    who = (initiated_by or "").strip().lower()
    return bool(who) and who in {username.lower(), (email or "").lower()}


def is_initiator(user, access_request: AccessRequest) -> bool:
    return initiated(access_request.initiated_by, user.get_username(), user.email or "")


def _either(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " or " + names[-1]


def _both(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


@dataclass
class ApprovalProgress:
    """Where one request stands with the people who decide it."""

    required: int
    received: int
    rule: str  # "2 approvals: policy … asks 2; the privilege asks 1"
    status: str
    approved_by: list[str] = field(default_factory=list)
    denied_by: list[str] = field(default_factory=list)
    waiting_for: list[str] = field(default_factory=list)  # may still approve, not yet decided
    initiator: str = ""  # the eligible person who initiated it, if one did
    escalate_to: str = ""  # the team and approver group that hear when too few may approve
    refusal: str = ""  # for the viewer: why they may not decide it ("" when they may)

    @property
    def needed(self) -> int:
        return max(self.required - self.received, 0)

    @property
    def cannot_be_met(self) -> bool:
        """Pending, and fewer people may still approve than approvals are missing."""
        return self.status == AccessRequest.Status.PENDING and len(self.waiting_for) < self.needed

    @property
    def waiting(self) -> str:
        """ "waiting for bob or dave", or who is missing when too few may approve."""
        if not self.needed:
            return ""
        if not self.waiting_for:
            nobody = "nobody else" if self.approved_by or self.initiator else "nobody"
            return f"{nobody} may approve; escalated to {self.escalate_to}"
        if self.cannot_be_met:
            missing = self.needed - len(self.waiting_for)
            return (
                f"waiting for {_both(self.waiting_for)} and {missing} more "
                f"{'person' if missing == 1 else 'people'} who may approve; "
                f"escalated to {self.escalate_to}"
            )
        if self.needed == 1:
            return f"waiting for {_either(self.waiting_for)}"
        if self.needed == len(self.waiting_for):
            return f"waiting for {_both(self.waiting_for)}"
        return f"waiting for {self.needed} of {', '.join(self.waiting_for)}"

    @property
    def summary(self) -> str:
        """ "1 of 2 — waiting for bob or dave" while pending; "2 of 2" once decided."""
        count = f"{self.received} of {self.required}"
        if self.status == AccessRequest.Status.PENDING and self.waiting:
            return f"{count} — {self.waiting}"
        return count

    @property
    def recorded(self) -> str:
        """What a person reads after their approval counted but more are needed."""
        return f"Recorded: {self.received} of {self.required}, {self.waiting}."


def _approver_ids(agent_ids, group_ids=()) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """Who holds `approve_for_agent` on each agent, directly or through a group (user ids,
    active or not), and the members of each group in `group_ids`: four queries."""
    agent_type = ContentType.objects.get_for_model(Agent)
    keys = {str(pk) for pk in agent_ids}
    by_agent: dict[int, set[int]] = {int(pk): set() for pk in keys}
    for object_pk, user_id in UserObjectPermission.objects.filter(
        content_type=agent_type, permission__codename=APPROVE, object_pk__in=keys
    ).values_list("object_pk", "user_id"):
        by_agent[int(object_pk)].add(user_id)
    groups_of_agent: dict[int, set[int]] = {}
    for object_pk, group_id in GroupObjectPermission.objects.filter(
        content_type=agent_type, permission__codename=APPROVE, object_pk__in=keys
    ).values_list("object_pk", "group_id"):
        groups_of_agent.setdefault(int(object_pk), set()).add(group_id)
    wanted = set(group_ids).union(*groups_of_agent.values())
    members: dict[int, set[int]] = {group_id: set() for group_id in wanted}
    for group_id, user_id in (
        get_user_model()
        .groups.through.objects.filter(group_id__in=wanted)
        .values_list("group_id", "user_id")
    ):
        members[group_id].add(user_id)
    for agent_id, groups in groups_of_agent.items():
        for group_id in groups:
            by_agent[agent_id] |= members[group_id]
    return by_agent, members


def approval_progress(access_requests, viewer=None) -> dict[int, ApprovalProgress]:
    """Progress for a page of requests (each with `agent` and `privilege` loaded), in a fixed
    handful of queries whatever the page size. With `viewer`, each carries why that person may
    not decide it (the same rule as `may_approve` and the decision service)."""
    page = list(access_requests)
    if not page:
        return {}
    approver_groups = {r.privilege.approver_group_id for r in page} - {None}
    users_of_agent, members = _approver_ids({r.agent_id for r in page}, approver_groups)
    group_names = dict(
        Group.objects.filter(pk__in=approver_groups | {r.agent.team_id for r in page}).values_list(
            "pk", "name"
        )
    )
    decided: dict[int, list[tuple[int, str, str]]] = {}
    for request_id, approver_id, username, verdict in (
        Decision.objects.filter(access_request__in=[r.pk for r in page], approver__isnull=False)
        .order_by("created_at", "pk")
        .values_list("access_request_id", "approver_id", "approver__username", "verdict")
    ):
        decided.setdefault(request_id, []).append((approver_id, username, verdict))

    candidate_ids = set().union(*users_of_agent.values(), *members.values())
    people = {
        pk: (username, email)
        for pk, username, email in get_user_model()
        .objects.filter(pk__in=candidate_ids, is_active=True)
        .values_list("pk", "username", "email")
    }

    progress = {}
    for access_request in page:
        eligible = set(users_of_agent[access_request.agent_id])
        approver_group_id = access_request.privilege.approver_group_id
        if approver_group_id:
            eligible |= members[approver_group_id]
        eligible &= people.keys()
        initiators = {pk for pk in eligible if initiated(access_request.initiated_by, *people[pk])}
        decisions = decided.get(access_request.pk, [])
        decided_ids = {approver_id for approver_id, _, _ in decisions}
        waiting = sorted(people[pk][0] for pk in eligible - initiators - decided_ids)
        escalate_to = f"team {group_names.get(access_request.agent.team_id, '')}"
        if approver_group_id:
            escalate_to += f" and approver group {group_names.get(approver_group_id, '')}"
        item = ApprovalProgress(
            required=access_request.approvals_required,
            received=sum(1 for _, _, verdict in decisions if verdict == Decision.Verdict.APPROVE),
            rule=access_request.approvals_rule,
            status=access_request.status_now(),
            approved_by=[n for _, n, v in decisions if v == Decision.Verdict.APPROVE],
            denied_by=[n for _, n, v in decisions if v == Decision.Verdict.DENY],
            waiting_for=waiting,
            initiator=", ".join(sorted(people[pk][0] for pk in initiators)),
            escalate_to=escalate_to,
        )
        if viewer is not None:
            if viewer.pk not in eligible:
                item.refusal = NOT_AN_APPROVER
            elif viewer.pk in initiators:
                item.refusal = INITIATOR
            elif viewer.pk in decided_ids:
                item.refusal = ALREADY_DECIDED
        progress[access_request.pk] = item
    return progress


def progress_of(access_request: AccessRequest, viewer=None) -> ApprovalProgress:
    return approval_progress([access_request], viewer)[access_request.pk]


def recorded_message(access_request: AccessRequest) -> str:
    """What a person reads after deciding: progress while approvals are missing ("Recorded:
    1 of 2, waiting for dave."), else where the request ended."""
    if access_request.is_pending:
        return progress_of(access_request).recorded
    return f"Recorded. Request #{access_request.pk} is {access_request.status}."


# --- admin's warnings: approval counts that cannot be met ---------------------------------------


def typical_outcome(privilege, compiled=None) -> policy.PolicyOutcome:
    """What policy asks of a plain request for `privilege` (an active agent, no delegation, the
    privilege's longest duration): how admin knows a policy's `@approvals` before any request."""
    compiled = compiled or policy.current_policies()
    facts = policy.PolicyFacts(
        agent_id="spiffe://custody.invalid/admin-preview",
        agent_name="admin preview",
        agent_status="active",
        sponsor="",
        team="",
        privilege_name=privilege.name,
        resource=privilege.resource,
        action=privilege.action,
        risk=privilege.risk,
        risk_level=privilege.risk_level,
        max_duration_seconds=privilege.max_duration_seconds,
        approvals_required=privilege.approvals_required,
        toxic_with=(),
        intent={"action": "", "target": "", "justification": ""},
        duration_seconds=privilege.max_duration_seconds,
        environment="production",
        hour_utc=12,
        weekday=3,
        initiated_by="",
        held_privileges=(),
        eligible_for=(privilege.name,),
        eligible=True,  # a plain request from an agent eligible for it
    )
    return policy.decide(compiled, facts)


def count_rule(privilege, outcome: policy.PolicyOutcome) -> str:
    """ "2: policy high-risk-two-approvals asks 2; the privilege asks 1" for admin."""
    if outcome.outcome != "request":
        routed = "granted by policy" if outcome.outcome == "auto_approve" else "denied by policy"
        return f"{privilege.approvals_required} (a plain request is {routed})"
    if outcome.policy_approvals_id:
        return (
            f"{outcome.approvals_required}: policy {outcome.policy_approvals_id} asks "
            f"{outcome.policy_approvals}; the privilege asks {privilege.approvals_required}"
        )
    return f"{outcome.approvals_required}: the privilege asks {privilege.approvals_required}"


@dataclass(frozen=True)
class Shortfall:
    """An agent whose requests for a privilege can never gather enough approvals."""

    agent: Agent
    privilege_name: str
    required: int
    eligible: int

    def __str__(self) -> str:
        people = "1 person" if self.eligible == 1 else f"{self.eligible} people"
        return (
            f"{self.agent.name}: {self.privilege_name} needs {self.required} approvals, "
            f"only {people} may approve"
        )


def approval_shortfalls(*, agents, privileges) -> list[Shortfall]:
    """Each (active agent, enabled privilege) pair whose typical request needs more distinct
    approvers than exist: its requests would escalate the moment they are filed."""
    agents = [agent for agent in agents if agent.status == Agent.Status.ACTIVE]
    compiled = policy.current_policies()
    needs = []
    for privilege in privileges:
        if not privilege.enabled:
            continue
        outcome = typical_outcome(privilege, compiled)
        if outcome.outcome == "request":
            needs.append((privilege, outcome.approvals_required))
    if not agents or not needs:
        return []
    by_agent, members = _approver_ids(
        {agent.pk for agent in agents}, {p.approver_group_id for p, _ in needs} - {None}
    )
    active = set(
        get_user_model()
        .objects.filter(pk__in=set().union(*by_agent.values(), *members.values()), is_active=True)
        .values_list("pk", flat=True)
    )
    found = []
    for agent in agents:
        for privilege, required in needs:
            eligible = by_agent[agent.pk] | members.get(privilege.approver_group_id, set())
            count = len(eligible & active)
            if count < required:
                found.append(Shortfall(agent, privilege.name, required, count))
    return found
