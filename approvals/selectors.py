"""Reads: what an agent or a person may see, restricted before anything else happens."""

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Exists, F, Max, OuterRef, Q, QuerySet
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
from approvals.models import (
    AccessRequest,
    Decision,
    Eligibility,
    EligibilityRequest,
    Grant,
    Privilege,
    Review,
)
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


def agent_eligibility(agent: Agent) -> QuerySet[Eligibility]:
    """What the agent may ask for now: not removed, not past its end date."""
    return (
        Eligibility.objects.in_force()
        .filter(agent=agent)
        .select_related("privilege")
        .order_by("privilege__resource", "privilege__action")
    )


@dataclass(frozen=True)
class CatalogueEntry:
    """One catalogue privilege as an agent sees it: with its eligibility in force, or None
    (then it may ask to become eligible, not for the privilege itself)."""

    privilege: Privilege
    eligibility: Eligibility | None


def privilege_catalogue(agent: Agent, *, eligible: bool | None = None) -> list[CatalogueEntry]:
    """The enabled catalogue for an agent, each privilege with the agent's eligibility for it."""
    in_force = {e.privilege_id: e for e in agent_eligibility(agent)}
    entries = [
        CatalogueEntry(privilege=privilege, eligibility=in_force.get(privilege.pk))
        for privilege in Privilege.objects.filter(enabled=True).order_by("resource", "action")
    ]
    if eligible is None:
        return entries
    return [entry for entry in entries if (entry.eligibility is not None) == eligible]


def agent_eligibility_history(agent: Agent) -> QuerySet[Eligibility]:
    """Every eligibility the agent ever had, newest first (the page's history)."""
    return (
        Eligibility.objects.filter(agent=agent)
        .select_related("privilege")
        .order_by("-created_at", "-pk")
    )


def agent_eligibility_requests(agent: Agent) -> QuerySet[EligibilityRequest]:
    return EligibilityRequest.objects.filter(agent=agent).select_related("privilege", "agent")


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


def eligibility_requests_visible_to(user) -> QuerySet[EligibilityRequest]:
    """Eligibility requests of agents the person can see, or whose requests they may decide."""
    if not user.is_authenticated:
        return EligibilityRequest.objects.none()
    if user.is_superuser:
        return EligibilityRequest.objects.all()
    return EligibilityRequest.objects.filter(
        Q(agent__in=agents_visible_to(user))
        | Q(agent__in=agents_approvable_by(user))
        | Q(privilege__approver_group__in=user.groups.all())
    )


def eligibility_requests_pending_for(user) -> QuerySet[EligibilityRequest]:
    """Agents' pending requests to become eligible that the person may decide: the same people
    as their access requests (`approvers.may_approve`), oldest first."""
    if not user.is_authenticated:
        return EligibilityRequest.objects.none()
    agent_ids = list(agents_approvable_by(user).values_list("pk", flat=True))
    group_ids = list(user.groups.values_list("pk", flat=True))
    mine = Q(agent_id__in=agent_ids)
    if group_ids:
        mine |= Q(privilege__approver_group_id__in=group_ids)
    return (
        EligibilityRequest.objects.filter(status=EligibilityRequest.Status.PENDING)
        .filter(mine)
        .select_related("agent", "agent__sponsor", "privilege")
        .order_by("created_at", "pk")
    )


# --- the inbox: search, filters, groups and pages over requests_pending_for ----------------------


@dataclass(frozen=True)
class InboxFilter:
    """What a person narrows their inbox to; every field optional."""

    text: str = ""  # words, each found in the agent, privilege, task, intent or request number
    risk: str = ""
    agent_id: int | None = None
    team_id: int | None = None
    task_id: str = ""  # exact
    older_than: timedelta | None = None

    @property
    def narrowed(self) -> bool:
        return bool(
            self.text
            or self.risk
            or self.agent_id
            or self.team_id
            or self.task_id
            or self.older_than
        )


def _word_matches(word: str) -> Q:
    """One search word, found in any of the places a person would look for it. A privilege
    name (`payments-db:write`, or its start `payments-db:wr`) is looked up in the catalog
    first and matches by privilege alone: the cheap, exact reading of what was meant."""
    resource, colon, action = word.partition(":")
    if colon and resource and not action.startswith("//"):
        privileges = Privilege.objects.filter(
            resource__iexact=resource, action__istartswith=action
        ).values_list("pk", flat=True)
        return Q(privilege_id__in=list(privileges))
    found = (
        Q(agent__name__icontains=word)
        | Q(agent__spiffe_id__icontains=word)
        | Q(task_id__icontains=word)
        | Q(privilege__resource__icontains=word)
        | Q(privilege__action__icontains=word)
        | Q(intent__action__icontains=word)
        | Q(intent__target__icontains=word)
        | Q(intent__justification__icontains=word)
        | Q(initiated_by__icontains=word)
    )
    if re.fullmatch(r"#?[0-9]{1,18}", word):
        found |= Q(pk=int(word.lstrip("#")))
    return found


def inbox_requests(
    user, wanted: InboxFilter, *, pending: QuerySet[AccessRequest] | None = None, now=None
) -> QuerySet[AccessRequest]:
    """The person's inbox (restricted first: `requests_pending_for`), then narrowed. `pending`
    is `requests_pending_for(user)` when the caller has it already (one permission lookup)."""
    requests = requests_pending_for(user) if pending is None else pending
    for word in wanted.text.split()[:8]:
        requests = requests.filter(_word_matches(word))
    if wanted.risk:
        requests = requests.filter(privilege__risk=wanted.risk)
    if wanted.agent_id:
        requests = requests.filter(agent_id=wanted.agent_id)
    if wanted.team_id:
        requests = requests.filter(agent__team_id=wanted.team_id)
    if wanted.task_id:
        requests = requests.filter(task_id=wanted.task_id)
    if wanted.older_than:
        requests = requests.filter(created_at__lte=(now or timezone.now()) - wanted.older_than)
    return requests


def inbox_page(
    requests: QuerySet[AccessRequest], *, after: tuple[datetime, int] | None, size: int
) -> tuple[list[AccessRequest], tuple[datetime, int] | None]:
    """One page in inbox order (soonest deadline, then id), by keyset: `after` is the
    (deadline, id) of the last row of the page before. Returns the rows and the keyset of the
    next page, None on the last one. The partial index `request_pending_inbox` serves it."""
    if after is not None:
        deadline, last_id = after
        # The first condition lets the index seek; the second breaks ties by id.
        requests = requests.filter(decision_deadline__gte=deadline).filter(
            Q(decision_deadline__gt=deadline) | Q(pk__gt=last_id)
        )
    rows = list(requests.order_by("decision_deadline", "pk")[: size + 1])
    if len(rows) <= size:
        return rows, None
    last = rows[size - 1]
    return rows[:size], (last.decision_deadline, last.pk)


def inbox_totals(requests: QuerySet[AccessRequest]) -> dict:
    """How many match, and the highest id among them: "deny all N matching" acts on those
    up to that id only, never on requests that arrived after the person looked."""
    return requests.order_by().aggregate(count=Count("pk"), highest_id=Max("pk"))


def inbox_groups(requests: QuerySet[AccessRequest], *, limit: int = 50) -> list[dict]:
    """The busiest (agent, task) pairs with their pending counts, largest first."""
    return list(
        requests.order_by()
        .values("agent_id", "agent__name", "task_id")
        .annotate(pending=Count("pk"))
        .order_by("-pending", "agent__name", "task_id")[:limit]
    )


@dataclass(frozen=True)
class InboxOverview:
    """The whole inbox at a glance, from one query: its agents and teams with their counts (the
    filter's choices), how many wait and the highest id among them."""

    pending: QuerySet[AccessRequest]  # requests_pending_for(user), to narrow further
    agents: list[dict]
    teams: list[dict]
    count: int
    highest_id: int | None


def inbox_overview(user) -> InboxOverview:
    pending = requests_pending_for(user)
    rows = list(
        pending.order_by()
        .values("agent_id", "agent__name", "agent__team_id", "agent__team__name")
        .annotate(pending=Count("pk"), highest_id=Max("pk"))
        .order_by("agent__name", "agent_id")
    )
    teams: dict[int, dict] = {}
    for row in rows:
        team = teams.setdefault(
            row["agent__team_id"],
            {"agent__team_id": row["agent__team_id"], "agent__team__name": row["agent__team__name"]}
            | {"pending": 0},
        )
        team["pending"] += row["pending"]
    return InboxOverview(
        pending=pending,
        agents=rows,
        teams=sorted(teams.values(), key=lambda team: team["agent__team__name"]),
        count=sum(row["pending"] for row in rows),
        highest_id=max((row["highest_id"] for row in rows), default=None),
    )


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
        return self.root.agent.sponsor_name


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


def grant_drift_flags(grant, limit: int = 50):
    """The newest drift flags on a grant, for its request's page (the caller may see the grant)."""
    from approvals.models import DriftFlag

    return list(DriftFlag.objects.filter(grant=grant).order_by("-created_at", "-pk")[:limit])


# --- reviews -----------------------------------------------------------------------------------


def reviews_for(user) -> QuerySet[Review]:
    """The reviews a person answers: those of the agents they sponsor; every review for an
    admin. Anything outside is not found (404), never forbidden."""
    reviews = Review.objects.select_related("agent__sponsor", "agent__team", "reviewer")
    if not (getattr(user, "is_authenticated", False) and user.is_active):
        return reviews.none()
    if user.is_superuser:
        return reviews
    return reviews.filter(agent__sponsor=user)


@dataclass
class EligibilityUse:
    """One eligibility in a review: its use in the review's period (the counts), the last time
    it was used at all (in the period or before it: the agent's whole history up to the end of
    the period), and whether it is pre-marked for removal (unused in the period)."""

    eligibility: Eligibility
    requests: int = 0
    approved: int = 0
    denied: int = 0
    grants: int = 0
    tool_calls: int = 0
    last_used: datetime | None = None
    period_start: datetime | None = None

    @property
    def unused(self) -> bool:
        return not (self.requests or self.grants or self.tool_calls)

    @property
    def last_used_before_period(self) -> bool:
        return self.last_used is not None and self.last_used < self.period_start

    def _seen(self, moment: datetime | None) -> None:
        if moment is not None and (self.last_used is None or moment > self.last_used):
            self.last_used = moment


def review_usage(review: Review) -> list[EligibilityUse]:
    """Each eligibility the agent holds (or, once closed, was decided on) with its use: counts
    over the review's period, last use over the agent's whole history up to the period's end.
    At most five queries whatever the number of eligibilities, requests, grants or tool calls:
    one per kind of use (each counting the period and finding the latest ever at once), never
    one per row. Tool calls are read through the `audit_tool_call_agent` index."""
    agent_id = review.agent_id
    start, end = review.period_start, review_period_end(review)
    eligibilities = Eligibility.objects.select_related("privilege").order_by(
        "privilege__resource", "privilege__action"
    )
    if review.status == Review.Status.OPEN:
        held = list(eligibilities.in_force().filter(agent_id=agent_id))
    else:  # what was decided on, kept or removed
        held = list(eligibilities.filter(pk__in=[int(pk) for pk in review.decisions]))
    uses = {
        eligibility.privilege_id: EligibilityUse(eligibility, period_start=start)
        for eligibility in held
    }
    for row in (
        AccessRequest.objects.filter(agent_id=agent_id, privilege_id__in=uses, created_at__lt=end)
        .values("privilege_id")
        .annotate(
            n=Count("pk", filter=Q(created_at__gte=start)),
            approved=Count(
                "pk", filter=Q(created_at__gte=start, status=AccessRequest.Status.APPROVED)
            ),
            denied=Count("pk", filter=Q(created_at__gte=start, status=AccessRequest.Status.DENIED)),
            last=Max("created_at"),
        )
        .order_by()
    ):
        use = uses[row["privilege_id"]]
        use.requests, use.approved, use.denied = row["n"], row["approved"], row["denied"]
        use._seen(row["last"])
    for row in (
        Grant.objects.filter(agent_id=agent_id, privilege_id__in=uses, issued_at__lt=end)
        .values("privilege_id")
        .annotate(n=Count("pk", filter=Q(issued_at__gte=start)), last=Max("issued_at"))
        .order_by()
    ):
        use = uses[row["privilege_id"]]
        use.grants = row["n"]
        use._seen(row["last"])
    # Tool calls name their grant, not its privilege: count per grant, then one query maps the
    # agent's grants to their privileges.
    calls = list(
        AuditEvent.objects.filter(
            agent_id=agent_id,
            verb="tool.called",
            occurred_at__lt=end,
            grant_id__isnull=False,
        )
        .values("grant_id")
        # grant_id, not pk: everything the query reads is in the index (an index-only scan).
        .annotate(n=Count("grant_id", filter=Q(occurred_at__gte=start)), last=Max("occurred_at"))
        .order_by()
    )
    privilege_of = (
        dict(
            Grant.objects.filter(agent_id=agent_id, privilege_id__in=uses).values_list(
                "pk", "privilege_id"
            )
        )
        if calls
        else {}
    )
    for row in calls:
        use = uses.get(privilege_of.get(row["grant_id"]))
        if use is not None:
            use.tool_calls += row["n"]
            use._seen(row["last"])
    return list(uses.values())


def review_period_end(review: Review) -> datetime:
    """The use shown runs to the review's completion (or now, while it is open)."""
    return review.closed_at or timezone.now()


def agent_reviews(agent: Agent) -> QuerySet[Review]:
    """An agent's reviews: the open one first, then the latest closed (its page; the caller
    may see the agent)."""
    return (
        Review.objects.filter(agent=agent)
        .select_related("reviewer")
        .order_by(F("closed_at").desc(nulls_first=True), "-pk")
    )


def may_open_reviews_of(user, agent: Agent) -> bool:
    """Whether `reviews_for(user)` holds the agent's reviews: its sponsor, or an admin."""
    if not (getattr(user, "is_authenticated", False) and user.is_active):
        return False
    return user.is_superuser or agent.sponsor_id == user.pk
