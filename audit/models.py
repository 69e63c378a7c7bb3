import hashlib
import json
from typing import Any

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

    # The primary key: on PostgreSQL the table is partitioned by ranges of it (audit migration
    # 0010, docs/audit-at-scale.md), and a partitioned table's keys must include that column.
    sequence = models.BigIntegerField(primary_key=True, editable=False)
    occurred_at = models.DateTimeField(editable=False, db_index=True)
    actor_type = models.CharField(max_length=10, choices=ActorType.choices)
    actor_id = models.CharField(max_length=255, blank=True)  # username, SPIFFE ID or "custody"
    verb = models.CharField(max_length=64, db_index=True)
    # Subjects are plain ids, not foreign keys: evidence outlives the rows it speaks of.
    agent_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    access_request_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    grant_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    data = models.JSONField(default=dict, blank=True)
    # Not unique: no index can be unique across partitions unless it holds the sequence, and
    # verification checks every link (docs/audit-at-scale.md, "Unique hashes go").
    previous_hash = models.CharField(max_length=64, editable=False)
    hash = models.CharField(max_length=64, editable=False)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["sequence"]
        indexes = [
            models.Index(fields=["actor_type", "actor_id", "sequence"]),
            # An agent's tool calls over time, with the grant each was made under: a review
            # counts them per eligibility (approvals.selectors.review_usage) from this index
            # alone, instead of walking every event of the period.
            # The audit page's filters, newest first, one keyset page at a time (10M events):
            # an agent's or a verb's events come off these in sequence order, no sort.
            models.Index(fields=["agent_id", "sequence"], name="audit_agent_sequence"),
            models.Index(fields=["verb", "sequence"], name="audit_verb_sequence"),
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
        if not self._state.adding:  # the primary key is the sequence: set before the insert
            raise TypeError("Audit events are append-only: they cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Audit events are append-only: they cannot be deleted.")

    def canonical_payload(self) -> bytes:
        """The bytes the hash covers: every field but the hash, in one stable encoding."""
        return canonical_payload({name: getattr(self, name) for name in HASHED_FIELDS})

    def compute_hash(self) -> str:
        return chain_hash({name: getattr(self, name) for name in HASHED_FIELDS})

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


# Every field the hash covers (all but the hash itself).
HASHED_FIELDS = (
    "sequence",
    "occurred_at",
    "actor_type",
    "actor_id",
    "verb",
    "agent_id",
    "access_request_id",
    "grant_id",
    "data",
    "previous_hash",
)


def canonical_payload(fields: dict[str, Any]) -> bytes:
    """The one encoding an event's hash covers, from its HASHED_FIELDS (occurred_at a datetime).

    A function as well as a method so that bulk writers (the 10M-event seed) and verifiers that
    read plain rows hash exactly as the model does, without building model instances."""
    body = dict(fields)
    body["occurred_at"] = fields["occurred_at"].isoformat(timespec="microseconds")
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_payload(fields)).hexdigest()


class AuditChainHead(models.Model):
    """The single row every append locks: it orders writers and remembers the last link."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_sequence = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)
    # PostgreSQL: where the newest partition of the events ends (exclusive), so an append knows
    # from the row it locks anyway whether its events have somewhere to go. Set only by the
    # owner's `audit_partition_ahead()` (the app role may update the two columns above only);
    # null on SQLite and after a flush (the function then reads the catalog).
    partitioned_until = models.BigIntegerField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="audit_single_head")]

    def __str__(self) -> str:
        return f"Audit chain head at #{self.last_sequence}"


class ChainCheck(models.Model):
    """One walk of the chain (periodic task, `verify_audit` or "Verify now"), shown on the audit
    page. A walk runs in a worker: the row is created `running` and its `verified` count moves
    as it goes, so the page can show progress; at most one walk runs at a time."""

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        ABANDONED = "abandoned", "Abandoned"  # its worker stopped reporting progress

    class Mode(models.TextChoices):
        INCREMENTAL = "incremental", "From the last signed checkpoint"
        FULL = "full", "Whole chain"

    checked_at = models.DateTimeField(auto_now_add=True, db_index=True)
    verified = models.BigIntegerField(default=0)
    first_bad_sequence = models.BigIntegerField(null=True, blank=True)
    problem = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.DONE)
    mode = models.CharField(max_length=12, choices=Mode.choices, default=Mode.FULL)
    # Where the walk began: the signed checkpoint it trusted (0 = the genesis), and the head
    # it walked to.
    started_after = models.BigIntegerField(default=0)
    target = models.BigIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-checked_at"]
        constraints = [
            # Concurrent "Verify now" clicks (and beat) start one walk: the second insert fails.
            models.UniqueConstraint(
                fields=["state"],
                condition=models.Q(state="running"),
                name="audit_one_chain_check_running",
            )
        ]

    def __str__(self) -> str:
        if self.state == self.State.RUNNING:
            return f"Chain check started {self.checked_at}: running"
        return f"Chain check at {self.checked_at}: {'ok' if self.ok else self.problem}"

    @property
    def ok(self) -> bool:
        return self.state == self.State.DONE and self.first_bad_sequence is None

    @property
    def reached(self) -> int:
        return self.started_after + self.verified

    @property
    def percent(self) -> int:
        todo = (self.target or 0) - self.started_after
        return 100 if todo <= 0 else min(100, int(100 * self.verified / todo))


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
