"""The Review model: a sponsor's periodic recertification of one agent (issue 13, "Reviews").
Imported by approvals/models.py so Django registers it; kept apart to keep that file short."""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from agents.models import Agent


class Review(models.Model):
    """Opened by the review sweep when the agent's `review_due` arrives; completed once, by its
    sponsor or an admin, with a keep/remove per eligibility and a verdict on the agent; expired
    by the sweep when nobody answered within the grace period."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETED = "completed", "Completed"
        EXPIRED = "expired", "Expired"

    class Verdict(models.TextChoices):
        ATTEST = "attest", "Attest: still needed as it is"
        REASSIGN = "reassign", "Reassign to another sponsor"
        SUSPEND = "suspend", "Suspend"
        RETIRE = "retire", "Retire"

    TRANSITIONS = {
        Status.OPEN: {Status.COMPLETED, Status.EXPIRED},
        Status.COMPLETED: set(),
        Status.EXPIRED: set(),
    }

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="reviews")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    due = models.DateField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    opened_at = models.DateTimeField(default=timezone.now)
    escalated_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    # {"<eligibility id>": "keep" | "remove"}, as decided; the evidence carries the same.
    decisions = models.JSONField(default=dict, blank=True)
    verdict = models.CharField(max_length=10, choices=Verdict.choices, blank=True)
    comment = models.CharField(max_length=2000, blank=True)

    class Meta:
        constraints = [
            # Opening is idempotent: at most one open review per agent.
            models.UniqueConstraint(
                fields=["agent"], condition=models.Q(status="open"), name="review_one_open"
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=["open", "completed", "expired"]),
                name="review_status_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["due"], condition=models.Q(status="open"), name="review_open_due"),
            # The review lists' "done" part: the latest closed first.
            models.Index(
                fields=["-closed_at"],
                condition=models.Q(status__in=["completed", "expired"]),
                name="review_closed_latest",
            ),
        ]

    def __str__(self) -> str:
        return f"review of {self.agent.name} due {self.due}"

    def grace_ends(self):
        return self.due + timedelta(days=settings.CUSTODY_REVIEW_GRACE_DAYS)

    def escalates_on(self):
        return self.due + timedelta(days=settings.CUSTODY_REVIEW_GRACE_DAYS / 2)
