"""An archived month verifies from the file alone, and the chain across its boundary."""

import io
import json
from datetime import UTC, datetime

import pytest
import time_machine
from django.core.management import CommandError, call_command

from audit.models import HASHED_FIELDS, chain_hash
from tests.audit.test_checkpoints import append, publish

pytestmark = pytest.mark.django_db


def month_of_events(month: int, count: int) -> list:
    with time_machine.travel(datetime(2026, month, 10, 9, 0, tzinfo=UTC), tick=False):
        events = append(count)
        assert publish().startswith("Checkpoint published")
    return events


def archive(month: str, out) -> str:
    stdout = io.StringIO()
    call_command("archive_audit", "--month", month, "--out", str(out), stdout=stdout)
    return stdout.getvalue()


def verify_archives(*paths) -> str:
    stdout = io.StringIO()
    args = [arg for path in paths for arg in ("--archive", str(path))]
    call_command("verify_audit", *args, stdout=stdout)
    return stdout.getvalue()


@pytest.fixture
def three_months():
    return [month_of_events(month, count) for month, count in ((1, 3), (2, 4), (3, 2))]


def test_an_archived_month_verifies_alone_and_links_to_the_next(three_months, tmp_path):
    january, february, _ = three_months
    first, second = tmp_path / "2026-01.jsonl", tmp_path / "2026-02.jsonl"

    assert archive("2026-01", first).startswith(
        f"Archived events #1–#{january[-1].sequence} ({january[-1].sequence} events)"
    )
    archive("2026-02", second)

    assert verify_archives(first, second).splitlines() == [
        f"Archive {first} intact: {january[-1].sequence} events #1–#{january[-1].sequence}, "
        f"ending at the signed checkpoint at #{january[-1].sequence}; the database's event "
        f"{january[-1].sequence + 1} links to it.",
        f"Archive {second} intact: 4 events #{february[0].sequence}–#{february[-1].sequence}, "
        f"ending at the signed checkpoint at #{february[-1].sequence}; the database's event "
        f"{february[-1].sequence + 1} links to it.",
    ]


def test_an_edited_archive_is_broken_at_the_edited_event(three_months, tmp_path):
    january = three_months[0]
    path = tmp_path / "2026-01.jsonl"
    archive("2026-01", path)
    lines = path.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["verb"] = "grant.revoked"
    lines[2] = json.dumps(edited)
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(CommandError) as failure:
        verify_archives(path)

    assert str(failure.value) == (
        f"Archive {path} broken: sequence {january[1].sequence}: content does not match its hash."
    )


def test_an_archive_cut_short_or_rehashed_does_not_verify(three_months, tmp_path):
    path = tmp_path / "2026-02.jsonl"
    archive("2026-02", path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(CommandError, match="has no end"):
        verify_archives(path)

    # Rewriting the last event and its hash cannot match the signed checkpoint.
    last = json.loads(lines[-2])
    last["verb"] = "grant.revoked"
    fields = {name: last[name] for name in HASHED_FIELDS}
    fields["occurred_at"] = datetime.fromisoformat(last["occurred_at"])
    last["hash"] = chain_hash(fields)
    path.write_text("\n".join([*lines[:-2], json.dumps(last), lines[-1]]) + "\n")
    with pytest.raises(CommandError, match="hash does not match the signed checkpoint"):
        verify_archives(path)


def test_a_month_without_a_signed_checkpoint_cannot_be_archived(three_months, tmp_path):
    with pytest.raises(CommandError, match="No signed checkpoint falls in 2026-05"):
        archive("2026-05", tmp_path / "2026-05.jsonl")
