"""Reads: what an agent or a person may see, restricted before anything else happens."""

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user

from agents.models import Agent
from agents.selectors import agents_visible_to
from approvals.approvers import (  # who decides: re-exported for the pages and Slack
    ApprovalProgress as ApprovalProgress,
)
from approvals.approvers import (
    approval_progress as approval_progress,
)
from approvals.approvers import (
    progress_of as progress_of,
)
from approvals.approvers import (
    recorded_message as recorded_message,
)
from approvals.lineage import grant_ancestors, grant_descendants
from approvals.models import AccessRequest, Decision, Grant
from approvals.tokens import token_claims
from audit.models import AuditEvent


def agent_requests(agent: Agent) -> QuerySet[AccessRequest]:
    return AccessRequest.objects.filter(agent=agent).select_related("privilege", "agent")


def agent_grants(agent: Agent, *, active: bool | None = None) -> QuerySet[Grant]:
    grants = Grant.objects.filter(agent=agent).select_related("privilege").order_by("-issued_at")
    if active is True:
        grants = grants.live()
    elif active is False:
        grants = grants.ended()
    return grants


def agents_approvable_by(user) -> QuerySet[Agent]:
    """The agents whose requests the person may approve by object permission (sponsor, backup
    approver, or through a group); superuser status grants nothing (`decisions.can_approve`
    checks the same for one request, with the privilege's approver group besides)."""
    return get_objects_for_user(
        user,
        "agents.approve_for_agent",
        klass=Agent,
        with_superuser=False,
        accept_global_perms=False,
    )


def requests_visible_to(user) -> QuerySet[AccessRequest]:
    """Requests for agents the person can see, or can approve (object or approver group)."""
    if not user.is_authenticated:
        return AccessRequest.objects.none()
    if user.is_superuser:
        return AccessRequest.objects.all()
    return AccessRequest.objects.filter(
        Q(agent__in=agents_visible_to(user))
        | Q(agent__in=agents_approvable_by(user))
        | Q(privilege__approver_group__in=user.groups.all())
    )


def requests_pending_for(user) -> QuerySet[AccessRequest]:
    """The person's inbox: pending requests they may decide and have not decided yet.

    The few agent and group ids are resolved first, so the planner walks the partial index
    on pending deadlines instead of joining permission tables for every pending row."""
    if not user.is_authenticated:
        return AccessRequest.objects.none()
    agent_ids = list(agents_approvable_by(user).values_list("pk", flat=True))
    group_ids = list(user.groups.values_list("pk", flat=True))
    mine = Q(agent_id__in=agent_ids)
    if group_ids:
        mine |= Q(privilege__approver_group_id__in=group_ids)
    decided = Decision.objects.filter(access_request=OuterRef("pk"), approver=user)
    return (
        AccessRequest.objects.filter(
            status=AccessRequest.Status.PENDING, decision_deadline__gt=timezone.now()
        )
        .filter(mine)
        .exclude(Exists(decided))
        .select_related("agent", "agent__sponsor", "privilege")
        .order_by("decision_deadline", "pk")
    )


def approvals_received(access_request_ids) -> dict[int, int]:
    """Approvals by people per request, for a page of requests (one query)."""
    rows = (
        Decision.objects.filter(
            access_request_id__in=list(access_request_ids),
            verdict=Decision.Verdict.APPROVE,
            approver__isnull=False,
        )
        .values_list("access_request_id")
        .annotate(count=Count("pk"))
    )
    return dict(rows)


def grants_visible_to(user) -> QuerySet[Grant]:
    if not user.is_authenticated:
        return Grant.objects.none()
    if user.is_superuser:
        return Grant.objects.all()
    return Grant.objects.filter(agent__in=agents_visible_to(user))


# --- chain of custody --------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkDecision:
    verdict: str
    approver: str  # a username, or "policy" for an automatic approval
    channel: str
    at: datetime
    comment: str


@dataclass(frozen=True)
class LinkToolCall:
    sequence: int
    at: datetime
    actor: str
    tool: str
    target: str
    outcome: str


@dataclass(frozen=True)
class ChainLink:
    """One grant in a chain: who held what, for how long, approved by whom, used for what."""

    grant: Grant
    access_request: AccessRequest
    decisions: list[LinkDecision] = field(default_factory=list)
    tool_calls: list[LinkToolCall] = field(default_factory=list)

    @property
    def agent(self):
        return self.grant.agent

    @property
    def approvers(self) -> list[LinkDecision]:
        return [d for d in self.decisions if d.verdict == Decision.Verdict.APPROVE]


@dataclass(frozen=True)
class ChainOfCustody:
    links: list[ChainLink]  # the root first, the grant asked about last
    onward: list[ChainLink]  # grants delegated from the grant asked about, breadth first

    @property
    def root(self) -> ChainLink:
        return self.links[0]

    @property
    def grant(self) -> ChainLink:
        return self.links[-1]

    @property
    def root_approvers(self) -> list[str]:
        """The people who approved the root grant; empty when policy granted it."""
        return [d.approver for d in self.root.approvers if d.channel != Decision.Channel.POLICY]

    @property
    def accountable(self) -> str:
        """The human the chain answers to: who approved the root, else the root's sponsor."""
        people = self.root_approvers
        if people:
            return ", ".join(people)
        return self.root.agent.sponsor.get_username()


def grant_chain_of_custody(grant: Grant, *, onward: bool = True) -> ChainOfCustody:
    """The chain from the root grant down to `grant`, and what was delegated on from it (unless
    `onward` is False: a request still waiting under `grant` has no descendants of its own, and
    the parent's other children are its siblings, not its chain).

    Fetch `grant` through a restricted selector first (`grants_visible_to`, `agent_grants`):
    the chain around it is shown whole, because accountability needs every link."""
    related = ("agent", "agent__sponsor", "agent__team", "privilege", "access_request")
    grants = Grant.objects.select_related(*related)
    links = grant_ancestors(grants.get(pk=grant.pk), grants=grants)
    links.reverse()
    onward_grants = grant_descendants([grant.pk], grants=grants) if onward else []

    every = links + onward_grants
    decisions: dict[int, list[LinkDecision]] = {}
    for decision in (
        Decision.objects.filter(access_request_id__in=[g.access_request_id for g in every])
        .select_related("approver")
        .order_by("created_at", "pk")
    ):
        decisions.setdefault(decision.access_request_id, []).append(
            LinkDecision(
                verdict=decision.verdict,
                approver=decision.approver.get_username() if decision.approver else "policy",
                channel=decision.channel,
                at=decision.created_at,
                comment=decision.comment,
            )
        )
    tool_calls: dict[int, list[LinkToolCall]] = {}
    for event in AuditEvent.objects.filter(
        verb="tool.called", grant_id__in=[g.pk for g in every]
    ).order_by("sequence"):
        tool_calls.setdefault(event.grant_id, []).append(
            LinkToolCall(
                sequence=event.sequence,
                at=event.occurred_at,
                actor=event.actor_id,
                tool=str(event.data.get("tool", "")),
                target=str(event.data.get("target", "")),
                outcome=str(event.data.get("outcome", "")),
            )
        )

    def link(g: Grant) -> ChainLink:
        return ChainLink(
            grant=g,
            access_request=g.access_request,
            decisions=decisions.get(g.access_request_id, []),
            tool_calls=tool_calls.get(g.pk, []),
        )

    return ChainOfCustody(links=[link(g) for g in links], onward=[link(g) for g in onward_grants])


def grant_token_claims(grant: Grant) -> dict:
    """The claims a token for this grant carries (never the token itself), for people to read."""
    return token_claims(grant)


def grant_ending_details(grant_ids) -> dict[int, str]:
    """Why each grant ended, in the words of whoever ended it (the `detail` its `grant.revoked`
    evidence holds), for a page of ended grants in one query."""
    ids = list(grant_ids)
    if not ids:
        return {}
    return {
        grant_id: str(data.get("detail") or "")
        for grant_id, data in AuditEvent.objects.filter(
            verb="grant.revoked", grant_id__in=ids
        ).values_list("grant_id", "data")
    }
