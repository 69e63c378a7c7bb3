from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models.functions import Cast
from django.utils import timezone

from agents.models import Agent
from core.formatting import duration_words

_SLUG = RegexValidator(r"^[a-z0-9][a-z0-9._-]*$", "Use lower-case letters, digits, '.', '-', '_'.")


class Risk(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


RISK_LEVEL = {Risk.LOW: 1, Risk.MEDIUM: 2, Risk.HIGH: 3, Risk.CRITICAL: 4}


class Privilege(models.Model):
    """A catalog entry `resource:action` that agents may ask for."""

    resource = models.CharField(max_length=100, validators=[_SLUG])
    action = models.CharField(max_length=100, validators=[_SLUG])
    description = models.TextField(blank=True)
    risk = models.CharField(max_length=10, choices=Risk.choices, default=Risk.MEDIUM)
    max_duration_seconds = models.PositiveIntegerField(
        default=3600, validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 3600)]
    )
    approvals_required = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    approver_group = models.ForeignKey(
        Group,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Members may approve requests for this privilege, besides the agent's approvers.",
    )
    decision_deadline_seconds = models.PositiveIntegerField(
        default=3600,
        validators=[MinValueValidator(60)],
        help_text="How long a pending request waits for people before it expires.",
    )
    slack_max_risk = models.CharField(
        max_length=10,
        choices=Risk.choices,
        default=Risk.HIGH,
        help_text="Requests up to this risk may be approved from Slack; above it, in the browser.",
    )
    toxic_with = models.ManyToManyField(
        "self",
        blank=True,
        symmetrical=True,
        help_text="Held together in one task, these form a toxic pair: never automatic.",
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["resource", "action"], name="privilege_unique_name")
        ]
        ordering = ["resource", "action"]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return f"{self.resource}:{self.action}"

    @property
    def risk_level(self) -> int:
        return RISK_LEVEL[self.risk]

    def approvable_in_slack(self) -> bool:
        """The Slack risk ceiling: above `slack_max_risk`, approval happens in the browser,
        which can ask for a fresh login."""
        return RISK_LEVEL[self.risk] <= RISK_LEVEL[self.slack_max_risk]


class PolicyKind(models.TextChoices):
    """What a policy decides, and so which schema it is validated against and which set it
    joins: requests (`policies/schema.cedarschema`) or recorded tool calls
    (`policies/drift.cedarschema`, Action::"tool_call")."""

    REQUEST = "request", "Requests (request, auto_approve)"
    DRIFT = "drift", "Drift (tool_call)"


class Policy(models.Model):
    """Cedar policy text, validated against its kind's schema on save; each save is a new
    version."""

    Kind = PolicyKind

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(
        max_length=10,
        choices=PolicyKind.choices,
        default=PolicyKind.REQUEST,
        help_text="Requests: decides each access request. Drift: decides each recorded tool "
        "call (allow, flag, or end the grant). Fixed once the policy exists.",
    )
    description = models.TextField(blank=True)
    text = models.TextField()
    enabled = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=1, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "policies"
        ordering = ["kind", "name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=["request", "drift"]), name="policy_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class PolicyRevision(models.Model):
    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="revisions")
    version = models.PositiveIntegerField()
    text = models.TextField()
    enabled = models.BooleanField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["policy", "version"], name="policy_revision_unique")
        ]
        ordering = ["policy", "-version"]

    def __str__(self) -> str:
        return f"{self.policy.name} v{self.version}"


class PolicyProposal(models.Model):
    """A policy change that waits for another admin (CUSTODY_POLICY_TWO_PERSON): the text, name
    and enabled flag to apply, and the version it was proposed against (applying refuses if the
    policy moved since)."""

    class Status(models.TextChoices):
        PROPOSED = "proposed", "Waiting for another admin"
        APPLIED = "applied", "Applied"
        REJECTED = "rejected", "Rejected"

    policy = models.ForeignKey(
        Policy, null=True, blank=True, on_delete=models.CASCADE, related_name="proposals"
    )
    base_version = models.PositiveIntegerField(null=True, blank=True)
    name = models.CharField(max_length=100)
    kind = models.CharField(
        max_length=10,
        choices=PolicyKind.choices,
        default=PolicyKind.REQUEST,
        help_text="For a new policy; a change to a policy keeps that policy's kind.",
    )
    description = models.TextField(blank=True)
    text = models.TextField()
    enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PROPOSED)
    proposed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    proposed_at = models.DateTimeField(default=timezone.now)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-proposed_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["proposed", "applied", "rejected"]),
                name="policy_proposal_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(kind__in=["request", "drift"]),
                name="policy_proposal_kind_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"Proposal #{self.pk}: {self.name}"


class PolicySetState(models.Model):
    """One row whose generation moves whenever any policy changes: processes rebuild on change."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    generation = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"Policy generation {self.generation}"


class AccessRequest(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        DENIED = "denied", "Denied"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"

    # Terminal states stay terminal.
    TRANSITIONS = {
        Status.PENDING: {Status.APPROVED, Status.DENIED, Status.EXPIRED, Status.CANCELLED},
        Status.APPROVED: set(),
        Status.DENIED: set(),
        Status.EXPIRED: set(),
        Status.CANCELLED: set(),
    }

    class Outcome(models.TextChoices):
        AUTO_APPROVE = "auto_approve", "Approved by policy"
        REQUEST = "request", "Routed to people"
        DENY = "deny", "Denied by policy"

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="access_requests")
    privilege = models.ForeignKey(Privilege, on_delete=models.PROTECT, related_name="+")
    task_id = models.CharField(max_length=200)
    intent = models.JSONField()
    context = models.JSONField(default=dict, blank=True)
    duration_seconds = models.PositiveIntegerField()
    parent_grant = models.ForeignKey(
        "Grant", null=True, blank=True, on_delete=models.PROTECT, related_name="delegations"
    )
    extension_of = models.ForeignKey(
        "Grant", null=True, blank=True, on_delete=models.PROTECT, related_name="extensions"
    )
    initiated_by = models.CharField(max_length=254, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    policy_outcome = models.CharField(max_length=20, choices=Outcome.choices)
    policy_ids = models.JSONField(default=list)
    policy_reason = models.TextField(blank=True)
    approvals_required = models.PositiveSmallIntegerField(default=1)
    # The two inputs of `approvals_required` (the larger wins), kept so every page shows why.
    approvals_privilege = models.PositiveSmallIntegerField(default=1)
    approvals_policy = models.PositiveSmallIntegerField(default=0)
    approvals_policy_id = models.CharField(max_length=200, blank=True)
    decision_deadline = models.DateTimeField()
    escalation_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    final_reason = models.CharField(max_length=255, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(
                    status__in=["pending", "approved", "denied", "expired", "cancelled"]
                ),
                name="access_request_status_valid",
            ),
        ]
        indexes = [
            # The deadline sweep reads pending requests by deadline; the inbox pages them by
            # keyset (deadline, id), which the id column lets the index answer in order.
            models.Index(
                fields=["decision_deadline", "id"],
                name="request_pending_inbox",
                condition=models.Q(status="pending"),
            ),
            # One agent's pending requests in inbox order (the agent filter; flood control's
            # per-agent count).
            models.Index(
                fields=["agent", "decision_deadline", "id"],
                name="request_pending_agent",
                condition=models.Q(status="pending"),
            ),
            models.Index(
                fields=["escalation_at"],
                name="request_pending_escalation",
                condition=models.Q(status="pending", escalated_at__isnull=True),
            ),
            models.Index(fields=["agent", "task_id"]),
            # The posture page: requests submitted, and those people decided, in the last days.
            models.Index(fields=["created_at"], name="request_created"),
            models.Index(
                fields=["decided_at"],
                name="request_decided_by_people",
                condition=models.Q(policy_outcome="request", status__in=["approved", "denied"]),
            ),
        ]

    def __str__(self) -> str:
        return f"Request #{self.pk} {self.privilege} for {self.agent.name}"

    @property
    def is_pending(self) -> bool:
        return self.status == self.Status.PENDING

    def deadline_passed(self, now=None) -> bool:
        return (now or timezone.now()) >= self.decision_deadline

    def status_now(self, now=None) -> str:
        """The status as a reader must see it: a pending request past its deadline is expired,
        whether or not the deadline sweep has written that yet."""
        if self.is_pending and self.deadline_passed(now):
            return self.Status.EXPIRED
        return self.status

    @property
    def approvals_rule(self) -> str:
        """Why this many approvals: "2 approvals: policy X asks 2; the privilege asks 1"."""
        count = self.approvals_required
        head = f"{count} approval{'s' if count != 1 else ''}"
        privilege = f"the privilege asks {self.approvals_privilege}"
        if not self.approvals_policy_id:
            return f"{head}: {privilege}; no policy asks for more"
        policy = f"policy {self.approvals_policy_id} asks {self.approvals_policy}"
        if self.approvals_policy > self.approvals_privilege:
            return f"{head}: {policy}; {privilege}"
        return f"{head}: {privilege}; {policy}"

    def approvals_received(self) -> int:
        """Approvals by people so far (policy's automatic approval is not one); uses prefetched
        decisions when there are some."""
        return sum(
            1
            for decision in self.decisions.all()
            if decision.verdict == Decision.Verdict.APPROVE and decision.approver_id is not None
        )


class Decision(models.Model):
    class Verdict(models.TextChoices):
        APPROVE = "approve", "Approve"
        DENY = "deny", "Deny"

    class Channel(models.TextChoices):
        WEB = "web", "Web"
        SLACK = "slack", "Slack"
        API = "api", "API"
        POLICY = "policy", "Policy"

    access_request = models.ForeignKey(
        AccessRequest, on_delete=models.PROTECT, related_name="decisions"
    )
    approver = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="custody_decisions",
    )
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # N approvals come from N distinct people.
            models.UniqueConstraint(
                fields=["access_request", "approver"],
                name="decision_one_per_person",
                condition=models.Q(approver__isnull=False),
            ),
        ]
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        who = self.approver or "policy"
        return f"{self.verdict} by {who} on request #{self.access_request_id}"


class GrantQuerySet(models.QuerySet):
    def live(self, now=None) -> "GrantQuerySet":
        """In force: not revoked and not past its time (the query form of `Grant.is_active`)."""
        return self.filter(revoked_at__isnull=True, expires_at__gt=now or timezone.now())

    def ended(self, now=None) -> "GrantQuerySet":
        """Revoked, or past its time whether or not the expiry jobs have run yet."""
        return self.filter(
            models.Q(revoked_at__isnull=False) | models.Q(expires_at__lte=now or timezone.now())
        )

    def due(self, now=None) -> "GrantQuerySet":
        """Past its time but not yet ended by the expiry jobs: what the expiry sweep ends."""
        return self.filter(revoked_at__isnull=True, expires_at__lte=now or timezone.now())


class Grant(models.Model):
    class RevokeReason(models.TextChoices):
        EXPIRED = "expired", "Expired"
        COMPLETED = "completed", "Task completed"
        REVOKED = "revoked", "Revoked"
        CASCADE = "cascade", "Parent grant ended"
        AGENT_SUSPENDED = "agent_suspended", "Agent suspended"
        POLICY = "policy", "Policy no longer allows it"
        POLICY_CHANGED = "policy_changed", "A policy change no longer allows it"
        DRIFT = "drift", "Tool call drifted from the intent"

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="grants")
    privilege = models.ForeignKey(Privilege, on_delete=models.PROTECT, related_name="+")
    # Exactly one grant per approved request.
    access_request = models.OneToOneField(
        AccessRequest, on_delete=models.PROTECT, related_name="grant"
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    depth = models.PositiveSmallIntegerField(default=0)
    task_id = models.CharField(max_length=200)
    scope = models.CharField(max_length=201)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.CharField(max_length=20, choices=RevokeReason.choices, blank=True)
    revoked_by = models.CharField(max_length=2048, blank=True)
    expiry_notice_sent_at = models.DateTimeField(null=True, blank=True)
    # Set when the expiry task is handed to the broker; the horizon enqueuer claims with it.
    expiry_enqueued_at = models.DateTimeField(null=True, blank=True)

    objects = GrantQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("issued_at")),
                name="grant_expires_after_issue",
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(revoked_at__isnull=True, revoke_reason="")
                    | models.Q(revoked_at__isnull=False) & ~models.Q(revoke_reason="")
                ),
                name="grant_revoked_with_reason",
            ),
            models.CheckConstraint(
                condition=models.Q(
                    revoke_reason__in=[
                        "",
                        "expired",
                        "completed",
                        "revoked",
                        "cascade",
                        "agent_suspended",
                        "policy",
                        "policy_changed",
                        "drift",
                    ]
                ),
                name="grant_revoke_reason_valid",
            ),
        ]
        indexes = [
            # The expiry sweep: live grants by expiry time.
            models.Index(
                fields=["expires_at"],
                name="grant_live_expiry",
                condition=models.Q(revoked_at__isnull=True),
            ),
            models.Index(
                fields=["expires_at"],
                name="grant_expiry_not_enqueued",
                condition=models.Q(revoked_at__isnull=True, expiry_enqueued_at__isnull=True),
            ),
            # What an agent holds live (toxic pairs, at every submit and introspection): walked
            # one distinct scope at a time (approvals.services.facts, held_scopes_sql), so the
            # cost follows the privileges it holds, not how many live grants carry them.
            models.Index(
                fields=["agent", "scope", "expires_at"],
                name="grant_live_scope",
                condition=models.Q(revoked_at__isnull=True),
            ),
            models.Index(fields=["agent", "task_id"]),
            # The posture page: grants issued per day over the last days.
            models.Index(fields=["issued_at"], name="grant_issued"),
        ]

    def __str__(self) -> str:
        return f"Grant #{self.pk} {self.scope} to {self.agent.name}"

    def is_active(self, now=None) -> bool:
        """Enforcement at every check: past its time a grant is over, whatever the jobs did."""
        return self.revoked_at is None and (now or timezone.now()) < self.expires_at

    @property
    def ended_reason(self) -> str:
        if self.revoked_at is not None:
            return self.revoke_reason
        return Grant.RevokeReason.EXPIRED if not self.is_active() else ""


class SigningKey(models.Model):
    """Custody's own token-signing keys. The current one signs; previous ones still verify."""

    class State(models.TextChoices):
        CURRENT = "current", "Current"
        PREVIOUS = "previous", "Previous (verifies, does not sign)"
        RETIRED = "retired", "Retired"

    kid = models.CharField(max_length=64, unique=True)
    algorithm = models.CharField(max_length=10, default="ES256")
    public_jwk = models.JSONField()
    encrypted_private_key = models.TextField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.CURRENT)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["state"],
                condition=models.Q(state="current"),
                name="signing_key_one_current",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kid} ({self.state})"


class SlackMessage(models.Model):
    """A Slack message Custody posted about a request or grant; kept so it can be updated."""

    class Kind(models.TextChoices):
        REQUEST = "request", "Approval request"
        ESCALATION = "escalation", "Escalation"
        EXPIRY_NOTICE = "expiry_notice", "Expiry notice"

    access_request = models.ForeignKey(
        AccessRequest, on_delete=models.CASCADE, related_name="slack_messages"
    )
    grant = models.ForeignKey(
        Grant, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    channel_id = models.CharField(max_length=32)  # a user id (DM) or a channel id
    ts = models.CharField(max_length=32, blank=True)  # empty until Slack accepted it
    rendered_status = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # A retried send never posts the same notice to the same place twice.
            models.UniqueConstraint(
                fields=["access_request", "kind", "channel_id"], name="slack_message_once_per_place"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} for request #{self.access_request_id} in {self.channel_id}"


class SlackNotice(models.Model):
    """A one-off Slack notice (an agent orphaned or dormant, a review due or escalated, a drift
    flag) to one person or channel: claimed before it is posted and marked once Slack took it,
    so a retried or repeated task never posts the same notice to the same place twice."""

    # What the notice is about, once: e.g. "agent:12:orphaned:<orphaned_at>", "review:3:due".
    key = models.CharField(max_length=200)
    channel_id = models.CharField(max_length=32)  # a user id (DM) or a channel id
    # Set while a task is posting it; a claim older than the lease is a crashed task's.
    claimed_at = models.DateTimeField(null=True, blank=True)
    ts = models.CharField(max_length=32, blank=True)  # empty until Slack accepted it
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["key", "channel_id"], name="slack_notice_once"),
        ]

    def __str__(self) -> str:
        return f"{self.key} to {self.channel_id}"


class SlackInteraction(models.Model):
    """Each Slack callback once: Slack's retries and replays change nothing."""

    key = models.CharField(max_length=128, unique=True)
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.key


def limits_words(max_duration_seconds: int | None, environment: str, ends_at) -> str:
    """An eligibility's limits in words: "at most 15 min, production only, until ..."."""
    parts = []
    if max_duration_seconds:
        parts.append(f"at most {duration_words(max_duration_seconds)}")
    if environment:
        parts.append(f"{environment} only")
    if ends_at:
        parts.append(f"until {ends_at:%Y-%m-%d %H:%M} UTC")
    return ", ".join(parts) or "no limits beyond the privilege's"


class EligibilityQuerySet(models.QuerySet):
    def in_force(self, now=None):
        """Not removed and not past its end date: what the agent may ask for now."""
        now = now or timezone.now()
        return self.filter(removed_at__isnull=True).filter(
            models.Q(ends_at__isnull=True) | models.Q(ends_at__gt=now)
        )


class Eligibility(models.Model):
    """What an agent may ask for at all (PIM's eligible assignment): requests activate it per
    task. Removed, never deleted: the history of who made an agent eligible stays."""

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="eligibilities")
    privilege = models.ForeignKey(Privilege, on_delete=models.PROTECT, related_name="+")
    # Each limit is optional: empty means the privilege's own maximum, any environment, no end.
    max_duration_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    environment = models.CharField(max_length=100, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    granted_by = models.CharField(max_length=254)
    reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    removed_at = models.DateTimeField(null=True, blank=True)
    removed_by = models.CharField(max_length=254, blank=True)
    # Its limits changed in place (eligibility_update); each change's old -> new is in the audit.
    updated_at = models.DateTimeField(null=True, blank=True)
    updated_by = models.CharField(max_length=254, blank=True)

    objects = EligibilityQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "eligibilities"
        constraints = [
            # One eligibility in force per agent and privilege; removed ones stay as history.
            models.UniqueConstraint(
                fields=["agent", "privilege"],
                condition=models.Q(removed_at__isnull=True),
                name="eligibility_one_current",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent.name} eligible for {self.privilege.name}"

    def limits(self) -> str:
        """ "at most 15 minutes, production only, until 2026-12-31" (or "no limits")."""
        return limits_words(self.max_duration_seconds, self.environment, self.ends_at)


class EligibilityRequest(models.Model):
    """An agent asks to become eligible for a privilege; the people who decide its requests
    (approvers.may_approve) approve or deny it once. Approved, it becomes an Eligibility."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        DENIED = "denied", "Denied"

    TRANSITIONS = {
        Status.PENDING: {Status.APPROVED, Status.DENIED},
        Status.APPROVED: set(),
        Status.DENIED: set(),
    }

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="eligibility_requests")
    privilege = models.ForeignKey(Privilege, on_delete=models.PROTECT, related_name="+")
    max_duration_seconds = models.PositiveIntegerField(null=True, blank=True)
    environment = models.CharField(max_length=100, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    justification = models.CharField(max_length=2000)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.CharField(max_length=254, blank=True)
    comment = models.CharField(max_length=1000, blank=True)
    eligibility = models.OneToOneField(
        Eligibility, null=True, blank=True, on_delete=models.PROTECT, related_name="request"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["pending", "approved", "denied"]),
                name="eligibility_request_status_valid",
            ),
            # One question at a time per agent and privilege.
            models.UniqueConstraint(
                fields=["agent", "privilege"],
                condition=models.Q(status="pending"),
                name="eligibility_request_one_pending",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent.name} asks to be eligible for {self.privilege.name}"

    def limits(self) -> str:
        """The limits asked, in the words an eligibility's limits use."""
        return limits_words(self.max_duration_seconds, self.environment, self.ends_at)


class EligibilitySlackMessage(models.Model):
    """A Slack message Custody posted about an eligibility request to one person or channel;
    kept so it can show the request's final state once it is decided anywhere."""

    eligibility_request = models.ForeignKey(
        EligibilityRequest, on_delete=models.CASCADE, related_name="slack_messages"
    )
    channel_id = models.CharField(max_length=32)  # a user id (DM) or a channel id
    ts = models.CharField(max_length=32, blank=True)  # empty until Slack accepted it
    rendered_status = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # A retried send never posts the same request to the same place twice.
            models.UniqueConstraint(
                fields=["eligibility_request", "channel_id"],
                name="eligibility_slack_message_once_per_place",
            ),
        ]

    def __str__(self) -> str:
        return f"eligibility request #{self.eligibility_request_id} in {self.channel_id}"


class DriftFlagQuerySet(models.QuerySet):
    def with_kind(self, kind: str) -> "DriftFlagQuerySet":
        """Flags whose kinds include `kind`, matched in the database over the list's JSON text
        (JSON `contains` is not portable to SQLite; kind names are whole quoted words, none
        inside another)."""
        return self.annotate(kinds_text=Cast("kinds", models.TextField())).filter(
            kinds_text__contains=f'"{kind}"'
        )


class DriftFlag(models.Model):
    """A recorded tool call that strayed from its grant's declared intent or privilege."""

    class Kind(models.TextChoices):
        TARGET = "target", "Target outside the intent"
        ACTION = "action", "Action the privilege does not cover"
        AFTER_COMPLETION = "after_completion", "Call after the task said it was done"
        BURST = "burst", "Burst of calls"

    class Outcome(models.TextChoices):
        FLAG = "flag", "Flagged"
        END = "end", "Grant ended"

    grant = models.ForeignKey(Grant, on_delete=models.PROTECT, related_name="drift_flags")
    kinds = models.JSONField(default=list)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    tool = models.CharField(max_length=200)
    target = models.CharField(max_length=500, blank=True)
    policy_ids = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)

    objects = DriftFlagQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"Drift on grant #{self.grant_id}: {', '.join(self.kinds) or 'policy'}"

    def kind_labels(self) -> list[str]:
        labels = dict(self.Kind.choices)
        return [labels.get(kind, kind) for kind in self.kinds]


from approvals.review_models import Review  # noqa: E402, F401  (registered with this app)
