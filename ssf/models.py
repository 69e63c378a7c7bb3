"""Shared Signals: one stream per resource server, and the outbox of Security Event Tokens
(RFC 8417) written in the transaction that ended a grant or suspended an agent."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from agents.models import Agent

# Event types (CAEP / RISC, https://openid.net/specs/): the payload's `custody` member says more.
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
ACCOUNT_DISABLED = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
EVENTS_SUPPORTED = (SESSION_REVOKED, ACCOUNT_DISABLED)
PUSH_METHOD = "urn:ietf:rfc:8935"
POLL_METHOD = "urn:ietf:rfc:8936"


class Stream(models.Model):
    """Where one resource server hears that tokens it may be holding stopped being good."""

    class Delivery(models.TextChoices):
        PUSH = "push", "Push (RFC 8935): Custody POSTs each event to the endpoint"
        POLL = "poll", "Poll (RFC 8936): the resource server fetches and acknowledges events"

    receiver = models.OneToOneField(
        Agent,
        on_delete=models.PROTECT,
        related_name="ssf_stream",
        limit_choices_to={"kind": Agent.Kind.RESOURCE_SERVER},
        help_text="The resource server (its audiences decide which grants it hears about).",
    )
    delivery = models.CharField(max_length=8, choices=Delivery.choices, default=Delivery.PUSH)
    endpoint_url = models.URLField(
        blank=True, help_text="Push only: the resource server's RFC 8935 receiver."
    )
    authorization_header = models.CharField(
        max_length=500,
        blank=True,
        help_text="Push only: sent as the Authorization header, so the receiver knows it is us.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~Q(delivery="push") | ~Q(endpoint_url=""),
                name="ssf_push_stream_has_endpoint",
            )
        ]

    def __str__(self) -> str:
        return f"{self.receiver.spiffe_id} ({self.delivery})"


class SecurityEvent(models.Model):
    """One signed SET for one stream: the outbox row. Push: delivered when the receiver says
    202; poll: delivered when the receiver acknowledges its jti."""

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="events")
    jti = models.CharField(max_length=64, unique=True)
    event_type = models.CharField(max_length=200)
    grant_id = models.BigIntegerField(null=True, blank=True)
    agent_id = models.BigIntegerField(null=True, blank=True)
    token = models.TextField()
    created_at = models.DateTimeField(db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    # Push: no attempt may start before this (a running attempt holds it as its lease).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["stream", "id"],
                name="ssf_event_undelivered",
                condition=Q(delivered_at__isnull=True, failed_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_type.rsplit('/', 1)[-1]} {self.jti}"
