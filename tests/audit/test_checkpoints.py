"""Signed checkpoints: someone who holds the database — and can therefore disable the triggers,
rewrite events, recompute every later hash and move the chain head — is still caught, because
the chain must contain (sequence, hash) pairs signed with a key the database does not hold.

Each attack runs on the test database (a copy), as its owner, the way an insider would."""

import base64
import io
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from audit.models import GENESIS_HASH, AuditCheckpoint, AuditEvent, ChainCheck
from audit.partitions import partitions
from audit.tasks import publish_audit_checkpoint, run_chain_check, verify_audit_chain
from core import log_context
from tests.factories import AuditEventFactory, UserFactory
from tests.workers import Worker

pytestmark = pytest.mark.django_db


def append(count: int) -> list[AuditEvent]:
    return [AuditEventFactory() for _ in range(count)]


def publish() -> str:
    out = io.StringIO()
    call_command("publish_checkpoint", stdout=out)
    return out.getvalue()


def verify(*against: Path, full: bool = False) -> str:
    out = io.StringIO()
    args = [arg for path in against for arg in ("--against", str(path))]
    args += ["--full"] if full else []
    call_command("verify_audit", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def broken(*against: Path, full: bool = False) -> str:
    with pytest.raises(CommandError) as failure:
        verify(*against, full=full)
    return str(failure.value)


@contextmanager
def as_the_owner():
    """What the tables' owner can do whatever the triggers say: switch them off, then on."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Each partition of the events has its own TRUNCATE trigger: the owner lifts those too.
            tables = ["audit_auditevent", "audit_auditchainhead", "audit_auditcheckpoint"]
            tables += [partition.name for partition in partitions()]
            for table in tables:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            try:
                yield cursor
            finally:
                for table in tables:
                    cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
            return
        cursor.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'trigger' AND tbl_name = 'audit_auditevent'"
        )
        triggers = cursor.fetchall()
        for name, _ in triggers:
            cursor.execute(f'DROP TRIGGER "{name}"')
        try:
            yield cursor
        finally:
            for _, sql in triggers:
                cursor.execute(sql)


def rewrite_and_rehash(cursor, sequence: int, verb: str) -> None:
    """Edit one event, recompute its hash and every later link, and move the head to match."""
    cursor.execute("UPDATE audit_auditevent SET verb = %s WHERE sequence = %s", [verb, sequence])
    previous_hash = None
    for event in AuditEvent.objects.filter(sequence__gte=sequence).order_by("sequence"):
        if previous_hash is not None:
            event.previous_hash = previous_hash
        event.hash = event.compute_hash()
        cursor.execute(
            "UPDATE audit_auditevent SET previous_hash = %s, hash = %s WHERE sequence = %s",
            [event.previous_hash, event.hash, event.sequence],
        )
        previous_hash = event.hash
    cursor.execute("UPDATE audit_auditchainhead SET last_hash = %s WHERE id = 1", [previous_hash])


def move_head(cursor, sequence: int, chain_hash: str) -> None:
    cursor.execute(
        "UPDATE audit_auditchainhead SET last_sequence = %s, last_hash = %s WHERE id = 1",
        [sequence, chain_hash],
    )


def erase_database_copies(cursor) -> None:
    cursor.execute("DELETE FROM audit_auditcheckpoint")


@pytest.fixture
def history(tmp_path):
    """Eight events with checkpoints after the third and the sixth, and a monitor that pinned
    each checkpoint from the public endpoint into its own file."""
    monitor = tmp_path / "monitor-pinned.jsonl"
    anonymous = APIClient()
    events = append(3)
    for more in (3, 2):
        assert publish().startswith("Checkpoint published at sequence")
        response = anonymous.get("/api/v1/audit/checkpoints/latest")
        assert response.status_code == 200
        with monitor.open("a") as pinned:
            pinned.write(json.dumps(response.json()) + "\n")
        events += append(more)
    assert [events[2].sequence, events[5].sequence] == [
        json.loads(line)["sequence"] for line in monitor.read_text().splitlines()
    ]
    return events, monitor


def test_an_intact_chain_holds_every_checkpoint(history, _checkpoint_file):
    events, monitor = history
    assert verify() == (
        "Audit chain intact: 2 events verified after the signed checkpoint at sequence "
        f"{events[5].sequence}, which vouches for every event up to it (--full walks those too).\n"
    )
    assert verify(full=True) == (
        f"Audit chain intact: {AuditEvent.objects.count()} events verified.\n"
        f"It matches all 2 checkpoints; the latest, at sequence {events[5].sequence}, is signed "
        "with the checkpoint key.\n"
    )
    assert verify(monitor).startswith("Audit chain intact")
    assert len(_checkpoint_file.read_text().splitlines()) == 2


def test_it_detects_an_edited_event_with_every_later_hash_and_the_head_recomputed(
    history, settings, tmp_path
):
    events, monitor = history
    with as_the_owner() as cursor:
        rewrite_and_rehash(cursor, events[1].sequence, "grant.revoked")
        erase_database_copies(cursor)
    first_checkpoint = events[2].sequence

    expected = (
        f"Audit chain broken at sequence {first_checkpoint}: content rewritten at or before "
        f"sequence {first_checkpoint}: checkpoint hash mismatch"
    )
    assert broken() == (
        f"{expected} ({settings.CUSTODY_CHECKPOINT_FILE}:1); no earlier checkpoint holds "
        f"({first_checkpoint - 1} events verified before it)."
    )
    # The monitor's pinned copy alone is enough, even without the published file.
    settings.CUSTODY_CHECKPOINT_FILE = tmp_path / "gone.jsonl"
    assert broken(monitor).startswith(f"{expected} ({monitor}:1)")


def test_it_detects_a_rewrite_between_two_checkpoints_naming_the_range(history):
    events, monitor = history
    with as_the_owner() as cursor:
        rewrite_and_rehash(cursor, events[4].sequence, "grant.revoked")
        erase_database_copies(cursor)

    assert broken().startswith(
        f"Audit chain broken at sequence {events[5].sequence}: content rewritten at or before "
        f"sequence {events[5].sequence}: checkpoint hash mismatch"
    )
    assert f"; the last checkpoint that holds is at {events[2].sequence} " in broken()
    assert "checkpoint hash mismatch" in broken(monitor)


def test_it_refuses_to_sign_a_rewritten_chain(history, _checkpoint_file, caplog):
    events, _ = history
    with as_the_owner() as cursor:
        rewrite_and_rehash(cursor, events[4].sequence, "grant.revoked")
        erase_database_copies(cursor)
    published = _checkpoint_file.read_text()

    with pytest.raises(CommandError, match=rf"sequence {events[5].sequence}: content rewritten"):
        publish()

    assert _checkpoint_file.read_text() == published
    assert "NOT published" in caplog.text


def test_it_detects_a_deleted_tail_with_the_head_moved_back(history, settings, tmp_path):
    events, monitor = history
    kept = events[3]
    with as_the_owner() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE sequence > %s", [kept.sequence])
        move_head(cursor, kept.sequence, kept.hash)
        erase_database_copies(cursor)

    expected = (
        f"Audit chain broken at sequence {kept.sequence + 1}: events after {kept.sequence} "
        f"removed: checkpoint at {events[5].sequence} exists"
    )
    assert broken().startswith(expected)
    settings.CUSTODY_CHECKPOINT_FILE = tmp_path / "gone.jsonl"
    assert broken(monitor).startswith(expected)


def test_it_detects_a_truncated_log_with_the_head_reset(history, settings, tmp_path):
    events, monitor = history
    with as_the_owner() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("TRUNCATE audit_auditevent, audit_auditcheckpoint")
        else:  # SQLite has no TRUNCATE: its DELETE without WHERE is the same act
            cursor.execute("DELETE FROM audit_auditevent")
            erase_database_copies(cursor)
        move_head(cursor, 0, GENESIS_HASH)

    expected = (
        f"Audit chain broken at sequence 1: events after 0 removed: checkpoint at "
        f"{events[5].sequence} exists"
    )
    assert broken().startswith(expected)
    settings.CUSTODY_CHECKPOINT_FILE = tmp_path / "gone.jsonl"
    assert broken(monitor).startswith(expected)


def test_it_detects_a_truncated_log_regrown_past_a_checkpoint(history):
    events, monitor = history
    with as_the_owner() as cursor:
        cursor.execute("DELETE FROM audit_auditevent")
        erase_database_copies(cursor)
        move_head(cursor, 0, GENESIS_HASH)
    append(events[2].sequence + 1)  # the app keeps writing: a new chain, past checkpoint one

    # From the newest checkpoint, the event it signed is gone; the full walk meets the first.
    assert broken(monitor).startswith(
        f"Audit chain broken at sequence {events[3].sequence + 1}: events after "
        f"{events[3].sequence} removed: checkpoint at {events[5].sequence} exists"
    )
    assert broken(monitor, full=True).startswith(
        f"Audit chain broken at sequence {events[2].sequence}: content rewritten at or before "
        f"sequence {events[2].sequence}"
    )


def test_it_detects_a_head_reset_behind_the_last_event():
    events = append(4)
    with as_the_owner() as cursor:
        move_head(cursor, events[1].sequence, events[1].hash)

    assert broken().startswith(
        f"Audit chain broken at sequence {events[2].sequence}: chain head reset to "
        f"{events[1].sequence} while events run to {events[3].sequence}"
    )


def test_a_forged_database_copy_is_refused_not_trusted(history, settings, tmp_path):
    events, _ = history
    with as_the_owner() as cursor:
        rewrite_and_rehash(cursor, events[4].sequence, "grant.revoked")
        forged = AuditCheckpoint.objects.get(sequence=events[5].sequence).document
        forged["hash"] = AuditEvent.objects.get(sequence=events[5].sequence).hash
        cursor.execute(
            "UPDATE audit_auditcheckpoint SET document = %s, hash = %s WHERE sequence = %s",
            [json.dumps(forged), forged["hash"], forged["sequence"]],
        )
    # With the published file, its checkpoint names the rewrite; without it, the database's
    # copies alone are all there is, and the forged one matches the forged chain: refused.
    assert "checkpoint hash mismatch" in broken()
    settings.CUSTODY_CHECKPOINT_FILE = tmp_path / "gone.jsonl"

    refused = (
        f"Audit chain broken at sequence {events[5].sequence}: checkpoint refused: database "
        f"copy: checkpoint at sequence {events[5].sequence} has a signature that does not verify"
    )
    # From the newest checkpoint (refused before any walk), and from the first event.
    assert broken() == f"{refused} (0 events verified before it)."
    assert broken(full=True) == f"{refused} ({events[5].sequence - 1} events verified before it)."


def test_a_malformed_checkpoint_is_refused_not_a_crash(history):
    AuditCheckpoint.objects.create(
        sequence=99,
        hash="0" * 64,
        signed_at="2026-01-01T00:00:00Z",
        document={"type": "custody.audit.checkpoint", "sequence": 99, "hash": "0" * 64, "kid": []},
    )

    assert broken() == (
        "Audit chain broken at sequence 0: checkpoint refused: database copy: checkpoint at "
        "sequence 99 has no key id or signature (0 events verified before it)."
    )


def test_the_web_check_and_the_periodic_check_use_the_checkpoints(history):
    events, _ = history
    admin = UserFactory(username="auditor", is_staff=True, is_superuser=True)
    web = Client()
    web.force_login(admin)
    with as_the_owner() as cursor:
        rewrite_and_rehash(cursor, events[1].sequence, "grant.revoked")
        erase_database_copies(cursor)

    assert web.post("/audit/verify/").status_code == 302
    run_chain_check(ChainCheck.objects.get().pk)  # what the worker does with the web's task
    assert verify_audit_chain() is False

    checks = list(ChainCheck.objects.order_by("checked_at"))
    assert len(checks) == 2
    for check in checks:
        assert check.first_bad_sequence == events[2].sequence
        assert check.problem.startswith(
            f"content rewritten at or before sequence {events[2].sequence}"
        )


def test_the_beat_task_publishes_to_the_file_the_log_and_the_endpoint(_checkpoint_file, caplog):
    events = append(2)
    anonymous = APIClient()
    missing = anonymous.get("/api/v1/audit/checkpoints/latest")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"

    with caplog.at_level(logging.INFO, logger="custody.audit.checkpoint"):
        assert publish_audit_checkpoint() == events[1].sequence
        assert publish_audit_checkpoint() is None  # the head has not moved: nothing new

    line = json.loads(_checkpoint_file.read_text())
    assert (line["sequence"], line["hash"]) == (events[1].sequence, events[1].hash)
    logged = [r for r in caplog.records if r.name == "custody.audit.checkpoint"]
    assert [json.loads(r.getMessage()) for r in logged] == [line]
    assert anonymous.get("/api/v1/audit/checkpoints/latest").json() == line

    # Anyone can check the signature with the published public key.
    jwks = anonymous.get("/.well-known/custody-audit-key").json()
    [jwk] = [key for key in jwks["keys"] if key["kid"] == line["kid"]]
    public_key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="))
    signed = {name: value for name, value in line.items() if name != "signature"}
    public_key.verify(
        base64.urlsafe_b64decode(line["signature"] + "=="),
        json.dumps(signed, sort_keys=True, separators=(",", ":")).encode(),
    )


def test_a_configured_key_signs_and_a_retired_key_still_verifies(settings, _checkpoint_file):
    append(2)
    publish()  # with the key derived from SECRET_KEY
    old_kid = json.loads(_checkpoint_file.read_text())["kid"]
    old_x = APIClient().get("/.well-known/custody-audit-key").json()["keys"][0]["x"]
    new_key = Ed25519PrivateKey.generate()
    settings.CUSTODY_CHECKPOINT_KEY = new_key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    ).decode()

    # Rotated: the old checkpoints no longer verify, until their key is listed as retired.
    assert f"is signed by an unknown key '{old_kid}'" in broken()
    settings.CUSTODY_CHECKPOINT_PREVIOUS_PUBLIC_KEYS = [old_x]
    assert verify().startswith("Audit chain intact")

    append(1)
    publish()
    new_kid = json.loads(_checkpoint_file.read_text().splitlines()[1])["kid"]
    assert new_kid != old_kid
    keys = APIClient().get("/.well-known/custody-audit-key").json()["keys"]
    assert [(key["kid"], key["status"]) for key in keys] == [
        (new_kid, "current"),
        (old_kid, "retired"),
    ]
    assert verify().startswith("Audit chain intact")


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def last_published_sequence(path: Path) -> int | None:
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["sequence"] if lines else None


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_beat_publishes_checkpoints_with_no_test_code_calling_the_task(settings, tmp_path):
    published = tmp_path / "published-by-beat.jsonl"
    events = append(3)
    worker = Worker(
        broker_url=settings.CELERY_BROKER_URL,
        env={"CUSTODY_CHECKPOINT_FILE": str(published), "CUSTODY_CHECKPOINT_SECONDS": "1"},
    )
    try:
        assert wait_until(lambda: last_published_sequence(published) == events[-1].sequence, 30), (
            worker.output()[-3000:]
        )
        events += append(2)
        assert wait_until(lambda: last_published_sequence(published) == events[-1].sequence, 30), (
            worker.output()[-3000:]
        )
    finally:
        worker.stop()

    settings.CUSTODY_CHECKPOINT_FILE = published
    assert verify(full=True).startswith(
        f"Audit chain intact: {events[-1].sequence} events verified."
    )
    assert AuditCheckpoint.objects.count() == len(published.read_text().splitlines()) >= 2


def test_a_broken_chain_is_logged_at_error(history, caplog):
    events, _ = history
    admin = UserFactory(username="auditor", is_staff=True, is_superuser=True)
    web = Client()
    web.force_login(admin)
    with as_the_owner() as cursor:
        rewrite_and_rehash(cursor, events[1].sequence, "grant.revoked")
        erase_database_copies(cursor)

    response = web.post("/audit/verify/")
    # The worker runs the web's walk with the fields the task message carries from the request.
    carried = {"request_id": response["X-Request-ID"], "person": "auditor"}
    run_chain_check.apply(args=[ChainCheck.objects.get().pk], headers={log_context.HEADER: carried})
    assert verify_audit_chain() is False
    broken = [
        record
        for record in caplog.records
        if getattr(record, "event", None) == "audit.chain_broken"
    ]
    assert [record.levelno for record in broken] == [logging.ERROR, logging.ERROR]
    assert broken[0].first_bad_sequence == ChainCheck.objects.first().first_bad_sequence
    assert "BROKEN at sequence" in broken[0].getMessage()
    # The check a person started names them and their request.
    assert log_context.fields_of(broken[0])["request_id"] == response["X-Request-ID"]
    assert log_context.fields_of(broken[0])["person"] == "auditor"


def test_an_intact_chain_logs_no_error(history, caplog):
    assert verify_audit_chain() is True
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
