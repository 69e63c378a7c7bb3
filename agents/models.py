from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models
from django.utils import timezone

from agents.spiffe import validate_spiffe_id, validate_trust_domain_name


def jwks_url_refusal(url: str) -> str | None:
    """Why Custody will not fetch a trust domain's JWKS from `url`, or None. Keys that vouch
    for agents come over https only (plain http only with DEBUG on, for local issuers)."""
    if not url or url.startswith("https://"):
        return None
    if settings.DEBUG and url.startswith("http://"):
        return None
    return "A JWKS URL must start with https:// (plain http:// is accepted only when DEBUG is on)."


class TrustDomain(models.Model):
    """A registered issuer of workload identity, whose keys Custody trusts for agent logins."""

    class Kind(models.TextChoices):
        SPIFFE = "spiffe", "SPIFFE trust domain (JWT-SVID)"
        OIDC = "oidc", "OIDC issuer"

    name = models.CharField(
        max_length=255,
        unique=True,
        help_text="SPIFFE: the trust domain (example.org). OIDC: a short label.",
    )
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.SPIFFE)
    issuer = models.CharField(
        max_length=512,
        blank=True,
        help_text="Exact `iss` value. Required for OIDC; for SPIFFE, if set, tokens must carry it.",
    )
    audience = models.CharField(
        max_length=255,
        blank=True,
        help_text="Audience tokens must name; empty means Custody's own (CUSTODY_AUDIENCE).",
    )
    jwks = models.JSONField(
        null=True, blank=True, help_text='The JWKS document ({"keys": [...]}) held inline.'
    )
    jwks_url = models.URLField(
        blank=True, help_text="Fetch the JWKS from here (cached) instead of holding it inline."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["issuer"], condition=~models.Q(issuer=""), name="trust_domain_unique_issuer"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.kind == self.Kind.SPIFFE:
            validate_trust_domain_name(self.name)
        if self.kind == self.Kind.OIDC and not self.issuer:
            raise ValidationError({"issuer": "An OIDC trust domain needs its exact issuer URL."})
        if not self.jwks and not self.jwks_url:
            raise ValidationError("Give the JWKS inline or a URL to fetch it from.")
        if refusal := jwks_url_refusal(self.jwks_url):
            raise ValidationError({"jwks_url": refusal})
        if self.jwks is not None and not (
            isinstance(self.jwks, dict) and isinstance(self.jwks.get("keys"), list)
        ):
            raise ValidationError({"jwks": 'A JWKS is an object with a "keys" list.'})
        if self.audience and self.audience == settings.CUSTODY_DELEGATION_AUDIENCE:
            raise ValidationError(
                {"audience": "This is the delegation audience; a login audience must differ."}
            )

    @property
    def expected_audience(self) -> str:
        return self.audience or settings.CUSTODY_AUDIENCE


class SponsorProfile(models.Model):
    """What Custody knows about a person beyond their login: where to reach them."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sponsor_profile"
    )
    slack_user_id = models.CharField(max_length=32, blank=True, db_index=True)
    time_zone = models.CharField(max_length=64, default="UTC")

    def __str__(self) -> str:
        return f"Profile of {self.user}"


class TeamProfile(models.Model):
    """A platform team (a Group) and where its escalations go."""

    group = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="team_profile")
    slack_channel_id = models.CharField(max_length=32, blank=True)

    def __str__(self) -> str:
        return f"Team {self.group}"


class Agent(models.Model):
    """A governed non-human identity with an accountable sponsor and an operating team."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        RETIRED = "retired", "Retired"

    class Kind(models.TextChoices):
        AGENT = "agent", "Agent"
        RESOURCE_SERVER = "resource_server", "Resource server (may introspect tokens)"

    # Retired is terminal: an identity once retired is never reused for new work.
    TRANSITIONS = {
        Status.ACTIVE: {Status.SUSPENDED, Status.RETIRED},
        Status.SUSPENDED: {Status.ACTIVE, Status.RETIRED},
        Status.RETIRED: set(),
    }

    class OrphanReason(models.TextChoices):
        SPONSOR_INACTIVE = "sponsor_inactive", "Its sponsor can no longer sign in"
        SPONSOR_DELETED = "sponsor_deleted", "Its sponsor was deleted"
        TEAM_EMPTY = "team_empty", "Its team has no members left"

    # Unique among agents that are not retired: a retired identity registered again is a new
    # agent, linked to the one before it (`previous_incarnation`).
    spiffe_id = models.CharField(max_length=2048, validators=[validate_spiffe_id])
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    # Empty only once its sponsor was deleted: a receiver orphans the agent first, in the
    # deletion's transaction, and the evidence names who sponsored it (agents/receivers.py).
    sponsor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.SET_NULL,
        related_name="sponsored_agents",
    )
    team = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="agents")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    review_due = models.DateField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    max_delegation_depth = models.PositiveSmallIntegerField(default=3)
    # An agent that logs in with an OIDC token instead of a JWT-SVID: which issuer and `sub`.
    oidc_trust_domain = models.ForeignKey(
        TrustDomain, null=True, blank=True, on_delete=models.PROTECT, related_name="oidc_agents"
    )
    oidc_subject = models.CharField(max_length=255, blank=True)
    # RFC 7662 requires the introspection endpoint to authorize its callers: only a workload
    # registered as a resource server may introspect, and only tokens whose `aud` it serves.
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.AGENT)
    introspection_audiences = models.JSONField(
        default=list,
        blank=True,
        help_text="Resource servers only: the token audiences (privilege resources, e.g. "
        '["payments-db"]) whose tokens it may introspect.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    status_changed_at = models.DateTimeField(default=timezone.now)
    # Invariant 13: an agent whose sponsor left (or whose team emptied) is flagged at once and,
    # unless someone from its team takes ownership within CUSTODY_ORPHAN_GRACE_DAYS, suspended.
    orphaned_at = models.DateTimeField(null=True, blank=True)
    orphan_reason = models.CharField(
        max_length=20, choices=OrphanReason.choices, blank=True, default=""
    )
    # Not authenticated for CUSTODY_DORMANT_AFTER_DAYS: flagged; authenticating clears it.
    dormant_at = models.DateTimeField(null=True, blank=True)
    previous_incarnation = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="next_incarnations",
        help_text="The retired agent that held this SPIFFE ID before.",
    )

    class Meta:
        permissions = [
            ("approve_for_agent", "Can approve requests for this agent"),
            ("manage_agent", "Can suspend, reactivate and reassign this agent"),
            # Who may approve is its own right, never implied by change_agent (invariant 11).
            ("manage_approvers", "Can add and remove who may approve for agents"),
            # The security team's overview of every agent: model-wide, never per object.
            ("view_posture", "Can see the posture dashboard of all agents"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "suspended", "retired"]),
                name="agent_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(kind__in=["agent", "resource_server"]),
                name="agent_kind_valid",
            ),
            models.UniqueConstraint(
                fields=["oidc_trust_domain", "oidc_subject"],
                condition=~models.Q(oidc_subject="") & ~models.Q(status="retired"),
                name="agent_unique_oidc_subject",
            ),
            models.UniqueConstraint(
                fields=["spiffe_id"],
                condition=~models.Q(status="retired"),
                name="agent_unique_live_spiffe_id",
                violation_error_message="An agent with this SPIFFE ID already exists.",
            ),
            models.CheckConstraint(
                condition=models.Q(orphaned_at__isnull=True, orphan_reason="")
                | models.Q(orphaned_at__isnull=False) & ~models.Q(orphan_reason=""),
                name="agent_orphan_has_reason",
            ),
            # Invariant 13: only an orphan (flagged as its sponsor is deleted) or a retired
            # agent is without a sponsor.
            models.CheckConstraint(
                condition=models.Q(sponsor__isnull=False)
                | models.Q(orphaned_at__isnull=False)
                | models.Q(status="retired"),
                name="agent_sponsorless_only_orphaned_or_retired",
            ),
        ]
        indexes = [
            # The lifecycle sweeps: orphans past their grace, and agents gone quiet.
            models.Index(
                fields=["orphaned_at"],
                condition=models.Q(orphaned_at__isnull=False, status="active"),
                name="agent_orphaned_active",
            ),
            models.Index(
                fields=["last_seen_at"],
                condition=models.Q(status="active"),
                name="agent_active_last_seen",
            ),
            # Overdue reviews, the oldest first (the dashboard, the review sweep).
            models.Index(
                fields=["review_due"],
                condition=models.Q(status="active"),
                name="agent_active_review_due",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.spiffe_id})"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    NO_SPONSOR = "(sponsor deleted)"  # no username can hold spaces or parentheses

    @property
    def sponsor_name(self) -> str:
        """The sponsor's username, or NO_SPONSOR once the sponsor was deleted."""
        return self.sponsor.get_username() if self.sponsor_id else self.NO_SPONSOR

    @property
    def is_orphaned(self) -> bool:
        return self.orphaned_at is not None

    @property
    def is_dormant(self) -> bool:
        return self.dormant_at is not None

    def orphan_deadline(self):
        """When an orphan is suspended unless someone takes ownership first."""
        if self.orphaned_at is None:
            return None
        return self.orphaned_at + timedelta(days=settings.CUSTODY_ORPHAN_GRACE_DAYS)

    @property
    def is_resource_server(self) -> bool:
        return self.kind == self.Kind.RESOURCE_SERVER

    def may_introspect(self, audience) -> bool:
        """Whether this resource server may learn about a token addressed to `audience`."""
        audiences = audience if isinstance(audience, list) else [audience]
        return self.is_resource_server and any(
            isinstance(name, str) and name in self.introspection_audiences for name in audiences
        )

    def clean(self) -> None:
        audiences = self.introspection_audiences
        if not isinstance(audiences, list) or not all(
            isinstance(name, str) and name for name in audiences
        ):
            raise ValidationError(
                {"introspection_audiences": "A list of audiences (privilege resources)."}
            )
        if self.is_resource_server and not audiences:
            raise ValidationError(
                {"introspection_audiences": "A resource server names the audiences it serves."}
            )
        if not self.is_resource_server and audiences:
            raise ValidationError(
                {"introspection_audiences": "Only a resource server introspects tokens."}
            )

    LIVE_SPIFFE_ID_TAKEN = "An agent with this SPIFFE ID already exists."

    def validate_constraints(self, exclude=None) -> None:
        # A conditional unique constraint reports on the whole form; this one is the field's.
        try:
            super().validate_constraints(exclude=exclude)
        except ValidationError as refused:
            errors = refused.update_error_dict({})
            general = errors.get(NON_FIELD_ERRORS, [])
            if any(self.LIVE_SPIFFE_ID_TAKEN in message for message in general):
                errors[NON_FIELD_ERRORS] = [
                    message for message in general if self.LIVE_SPIFFE_ID_TAKEN not in message
                ] or None
                if errors[NON_FIELD_ERRORS] is None:
                    del errors[NON_FIELD_ERRORS]
                errors.setdefault("spiffe_id", []).append(self.LIVE_SPIFFE_ID_TAKEN)
            raise ValidationError(errors)

    def review_overdue(self, today=None) -> bool:
        today = today or timezone.localdate()
        return self.review_due is not None and self.review_due < today


class SpentActorToken(models.Model):
    """A delegation actor token already presented: its `jti` is accepted once, then refused until
    the token has expired (when the row may be pruned)."""

    trust_domain = models.ForeignKey(TrustDomain, on_delete=models.CASCADE, related_name="+")
    jti = models.CharField(max_length=255)
    expires_at = models.DateTimeField(db_index=True)
    spent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # A replay loses this race in the database, whatever the cache is doing.
            models.UniqueConstraint(
                fields=["trust_domain", "jti"], name="spent_actor_token_unique_jti"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.trust_domain} jti {self.jti}"


class BackupApprover(models.Model):
    """A person besides the sponsor who may approve an agent's requests.

    Written only by `backup_approver_add` / `backup_approver_remove`, which keep guardian's
    `approve_for_agent` object permission (what `can_approve` reads) in step and audit it."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="backup_approvers")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="backup_approver_for"
    )
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Empty for approvers carried over from object permissions.",
    )
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "user"], name="backup_approver_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} approves for {self.agent.name}"
