"""Which privilege names a broker, and every credential a broker made: one row per grant, which
is also the outbox row for its destruction (written in the transaction that ends the grant)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from approvals.models import Grant, Privilege


def _kind_choices():
    from brokers.base import broker_kinds

    return broker_kinds()


class PrivilegeBroker(models.Model):
    """A privilege's broker: granting the privilege also yields a real credential of this kind,
    created when the agent asks for it. The configuration names a target, never a secret."""

    privilege = models.OneToOneField(Privilege, on_delete=models.CASCADE, related_name="broker")
    kind = models.CharField(max_length=40, choices=_kind_choices)
    config = models.JSONField(
        default=dict,
        help_text='e.g. {"target": "payments_db", "group_role": "payments_read"}: the target '
        "picks the environment variables holding the connection secret.",
    )
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.privilege.name} → {self.kind}"

    @property
    def target(self) -> str:
        return str(self.config.get("target", ""))


class BrokeredCredential(models.Model):
    """One credential made for one grant (the grant is its task binding), delivered once.

    States: `provisioning` (row written, the broker is creating it), `live` (delivered to the
    agent), `destroy_pending` (the grant ended or creation failed: the outbox wants it gone),
    `destroyed` (the target confirmed) and `failed` (creation failed before anything existed on
    the target: kept as evidence; never used today, creation failures go to destroy_pending
    because a half-made credential may exist)."""

    class State(models.TextChoices):
        PROVISIONING = "provisioning", "Provisioning"
        LIVE = "live", "Live"
        DESTROY_PENDING = "destroy_pending", "Revocation pending"
        DESTROYED = "destroyed", "Destroyed"
        FAILED = "failed", "Failed"

    TRANSITIONS = {
        State.PROVISIONING: {State.LIVE, State.DESTROY_PENDING, State.FAILED},
        State.LIVE: {State.DESTROY_PENDING},
        State.DESTROY_PENDING: {State.DESTROYED},
        State.DESTROYED: set(),
        State.FAILED: set(),
    }

    grant = models.OneToOneField(
        Grant, on_delete=models.PROTECT, related_name="brokered_credential"
    )
    name = models.CharField(max_length=63, unique=True)
    kind = models.CharField(max_length=40)
    # The configuration it was made with: destroying uses the same target whatever the admin
    # changed on the privilege since.
    config = models.JSONField(default=dict)
    target = models.CharField(max_length=64, db_index=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PROVISIONING)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)
    end_requested_at = models.DateTimeField(null=True, blank=True)
    destroyed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # No destroy attempt may start before this (a running attempt holds it as its lease).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    state__in=["provisioning", "live", "destroy_pending", "destroyed", "failed"]
                ),
                name="brokers_credential_state_valid",
            ),
            models.CheckConstraint(
                condition=~Q(state="live") | Q(delivered_at__isnull=False),
                name="brokers_live_credential_was_delivered",
            ),
            models.CheckConstraint(
                condition=~Q(state="destroy_pending") | Q(end_requested_at__isnull=False),
                name="brokers_pending_credential_has_end_request",
            ),
            models.CheckConstraint(
                condition=~Q(state="destroyed") | Q(destroyed_at__isnull=False),
                name="brokers_destroyed_credential_has_time",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at", "id"],
                name="brokers_cred_destroy_due",
                condition=Q(state="destroy_pending"),
            ),
            models.Index(
                fields=["created_at", "id"],
                name="brokers_cred_provisioning",
                condition=Q(state="provisioning"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    @property
    def revocation_pending(self) -> bool:
        return self.state in (self.State.DESTROY_PENDING, self.State.PROVISIONING) and (
            self.end_requested_at is not None
        )
