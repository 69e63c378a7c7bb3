import hashlib
import json

from django.db import models

GENESIS_HASH = "0" * 64


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise TypeError("Audit events are append-only: they cannot be updated.")

    def delete(self):
        raise TypeError("Audit events are append-only: they cannot be deleted.")


class AuditEvent(models.Model):
    """One piece of evidence. Written only through `audit.services.record()`."""

    class ActorType(models.TextChoices):
        AGENT = "agent", "Agent"
        USER = "user", "Person"
        SYSTEM = "system", "System"

    sequence = models.BigIntegerField(unique=True, editable=False)
    occurred_at = models.DateTimeField(editable=False, db_index=True)
    actor_type = models.CharField(max_length=10, choices=ActorType.choices)
    actor_id = models.CharField(max_length=255, blank=True)  # username, SPIFFE ID or "custody"
    verb = models.CharField(max_length=64, db_index=True)
    # Subjects are plain ids, not foreign keys: evidence outlives the rows it speaks of.
    agent_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    access_request_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    grant_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    data = models.JSONField(default=dict, blank=True)
    previous_hash = models.CharField(max_length=64, unique=True, editable=False)
    hash = models.CharField(max_length=64, unique=True, editable=False)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["sequence"]
        indexes = [
            models.Index(fields=["actor_type", "actor_id", "sequence"]),
            # An agent's tool calls over time, with the grant each was made under: a review
            # counts them per eligibility (approvals.selectors.review_usage) from this index
            # alone, instead of walking every event of the period.
            models.Index(
                fields=["agent_id", "occurred_at"],
                include=["grant_id"],
                condition=models.Q(verb="tool.called"),
                name="audit_tool_call_agent",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.verb} by {self.actor_type}:{self.actor_id}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise TypeError("Audit events are append-only: they cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Audit events are append-only: they cannot be deleted.")

    def canonical_payload(self) -> bytes:
        """The bytes the hash covers: every field but the hash, in one stable encoding."""
        body = {
            "sequence": self.sequence,
            "occurred_at": self.occurred_at.isoformat(timespec="microseconds"),
            "actor_type": self.actor_type,
            "actor_id": self.actor_id,
            "verb": self.verb,
            "agent_id": self.agent_id,
            "access_request_id": self.access_request_id,
            "grant_id": self.grant_id,
            "data": self.data,
            "previous_hash": self.previous_hash,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def compute_hash(self) -> str:
        return hashlib.sha256(self.canonical_payload()).hexdigest()

    def canonical_parts(self) -> tuple[str, str]:
        """`canonical_payload` split around the three values an append only knows under the
        chain-head lock: payload = head + occurred_at + '","previous_hash":"' + previous hash
        + '","sequence":' + sequence + tail (the keys sort last but for `verb`), for the
        database function that chains events in one statement (audit migration 0007)."""
        body = {
            "access_request_id": self.access_request_id,
            "actor_id": self.actor_id,
            "actor_type": self.actor_type,
            "agent_id": self.agent_id,
            "data": self.data,
            "grant_id": self.grant_id,
        }
        dump = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        verb = json.dumps(self.verb, ensure_ascii=False)
        return dump[:-1] + ',"occurred_at":"', f',"verb":{verb}}}'


class AuditChainHead(models.Model):
    """The single row every append locks: it orders writers and remembers the last link."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_sequence = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="audit_single_head")]

    def __str__(self) -> str:
        return f"Audit chain head at #{self.last_sequence}"


class ChainCheck(models.Model):
    """The result of one walk of the chain (periodic task or on demand), shown on the audit page."""

    checked_at = models.DateTimeField(auto_now_add=True, db_index=True)
    verified = models.BigIntegerField()
    first_bad_sequence = models.BigIntegerField(null=True, blank=True)
    problem = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-checked_at"]

    def __str__(self) -> str:
        return f"Chain check at {self.checked_at}: {'ok' if self.ok else self.problem}"

    @property
    def ok(self) -> bool:
        return self.first_bad_sequence is None


class AuditCheckpoint(models.Model):
    """A copy of one published checkpoint, for the HTTP endpoint and the publisher's next step.

    A convenience only: verification trusts a copy here only if its signature verifies with the
    key the database does not hold, and always reads the published file as well."""

    sequence = models.BigIntegerField(unique=True)
    hash = models.CharField(max_length=64)
    signed_at = models.DateTimeField()
    document = models.JSONField()

    class Meta:
        ordering = ["-sequence"]

    def __str__(self) -> str:
        return f"Audit checkpoint at #{self.sequence}"
