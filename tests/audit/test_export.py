"""export_audit streams the evidence log as JSON Lines or CSV, filtered by time and agent."""

import csv
import io
import json
from datetime import UTC, datetime

import pytest
import time_machine
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from audit.selectors import EXPORT_FIELDS
from audit.services import Actor, record
from tests.factories import AgentFactory, AuditEventFactory

pytestmark = pytest.mark.django_db


def export(*args: str) -> str:
    out = io.StringIO()
    call_command("export_audit", *args, stdout=out)
    return out.getvalue()


def jsonl(*args: str) -> list[dict]:
    return [json.loads(line) for line in export("--format", "jsonl", *args).splitlines()]


def csv_rows(*args: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(export("--format", "csv", *args))))


def recorded_at(moment: datetime, **event) -> AuditEvent:
    with time_machine.travel(moment, tick=False):
        return record(actor=Actor.system("export-test"), **event)


def test_it_exports_every_event_as_json_lines_in_sequence_order():
    AgentFactory()
    record(actor=Actor.system(), verb="test.exported", data={"note": "ünïcode ✓"})
    lines = jsonl()
    stored = list(AuditEvent.objects.order_by("sequence"))
    assert [line["sequence"] for line in lines] == [event.sequence for event in stored]
    assert [line["hash"] for line in lines] == [event.hash for event in stored]
    assert all(sorted(line) == sorted(EXPORT_FIELDS) for line in lines)
    assert lines[-1]["verb"] == "test.exported"
    assert lines[-1]["data"] == {"note": "ünïcode ✓"}
    assert lines[-1]["previous_hash"] == lines[-2]["hash"]


def test_it_exports_csv_with_a_header_and_one_row_per_event():
    record(actor=Actor.system(), verb="test.exported", data={"b": 2, "a": 1})
    header, *rows = csv_rows()
    assert header == EXPORT_FIELDS
    assert len(rows) == AuditEvent.objects.count()
    last = dict(zip(header, rows[-1], strict=True))
    assert last["verb"] == "test.exported"
    assert json.loads(last["data"]) == {"a": 1, "b": 2}
    assert last["hash"] == AuditEvent.objects.get(verb="test.exported").hash


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@"])
def test_it_neutralises_spreadsheet_formulas_in_csv(prefix):
    formula = f'{prefix}HYPERLINK("http://evil.example/","click")'
    record(actor=Actor(AuditEvent.ActorType.USER, formula), verb="test.formula")
    header, *rows = csv_rows()
    last = dict(zip(header, rows[-1], strict=True))
    assert last["actor_id"] == f"'{formula}"
    assert last["verb"] == "test.formula"  # ordinary text is left alone


def test_it_leaves_empty_csv_cells_empty():
    record(actor=Actor(AuditEvent.ActorType.USER, ""), verb="test.empty", data={})
    header, *rows = csv_rows()
    last = dict(zip(header, rows[-1], strict=True))
    assert last["actor_id"] == ""  # an empty string, not a lone quote
    assert last["agent_id"] == last["grant_id"] == ""  # nulls too
    assert not [cell for row in rows for cell in row if cell == "'"]


@pytest.mark.parametrize("prefix", ["\t", "\r"])
def test_it_neutralises_control_character_prefixes_in_csv(prefix):
    record(actor=Actor(AuditEvent.ActorType.USER, f"{prefix}=1+1"), verb="test.formula")
    header, *rows = csv_rows()
    assert dict(zip(header, rows[-1], strict=True))["actor_id"] == f"'{prefix}=1+1"


def verbs(lines: list[dict]) -> list[str]:
    """The verbs this module wrote (migrations may have written others, at today's date)."""
    return [line["verb"] for line in lines if line["verb"].startswith("test.")]


def test_it_filters_by_since():
    recorded_at(datetime(2025, 1, 10, 12, tzinfo=UTC), verb="test.old")
    recorded_at(datetime(2025, 3, 1, 0, 0, tzinfo=UTC), verb="test.boundary")
    recorded_at(datetime(2025, 6, 1, 12, tzinfo=UTC), verb="test.new")
    everything = verbs(jsonl())
    assert everything == ["test.old", "test.boundary", "test.new"]
    assert verbs(jsonl("--since", "2025-03-01")) == ["test.boundary", "test.new"]
    assert verbs(jsonl("--since", "2025-03-01T02:00:00+01:00")) == ["test.new"]
    assert verbs(jsonl("--since", "2025-06-01 12:00:00")) == ["test.new"]


def test_it_filters_by_agent_spiffe_id_or_id():
    invoice_bot = AgentFactory(spiffe_id="spiffe://example.test/agents/invoice-bot")
    other = AgentFactory()
    record(actor=Actor.for_agent(invoice_bot), verb="tool.called", agent_id=invoice_bot.pk)
    record(actor=Actor.for_agent(other), verb="tool.called", agent_id=other.pk)
    by_spiffe_id = jsonl("--agent", invoice_bot.spiffe_id)
    assert [line["verb"] for line in by_spiffe_id] == ["agent.registered", "tool.called"]
    assert {line["agent_id"] for line in by_spiffe_id} == {invoice_bot.pk}
    assert jsonl("--agent", str(invoice_bot.pk)) == by_spiffe_id
    header, *rows = csv_rows("--agent", str(other.pk))
    assert {row[header.index("agent_id")] for row in rows} == {str(other.pk)}
    assert len(rows) == 2


@pytest.mark.parametrize("agent", ["spiffe://example.test/agents/nobody", "987654"])
def test_it_refuses_an_unknown_agent(agent):
    with pytest.raises(CommandError, match=f"No agent '{agent}' is registered"):
        export("--agent", agent)


@pytest.mark.parametrize("since", ["yesterday", "2025-13-01", "2025-02-30T10:00:00", "31/01/2025"])
def test_it_refuses_a_since_that_is_not_an_iso_date(since):
    with pytest.raises(CommandError, match=rf"--since '{since}' is not an ISO date"):
        export("--since", since)


def test_it_refuses_an_unknown_format():
    with pytest.raises(CommandError, match="invalid choice: 'xml'"):
        export("--format", "xml")


def test_it_reports_progress_on_stderr_and_keeps_stdout_for_the_events():
    events = [AuditEventFactory() for _ in range(5)]
    total = AuditEvent.objects.count()
    out, err = io.StringIO(), io.StringIO()

    call_command("export_audit", "--progress-every", "2", stdout=out, stderr=err)

    assert [json.loads(line)["sequence"] for line in out.getvalue().splitlines()][-5:] == [
        event.sequence for event in events
    ]
    progress = err.getvalue().splitlines()
    assert [line.split(" events")[0].strip() for line in progress] == [
        f"exported {n:,}" for n in range(2, total + 1, 2)
    ] + [f"Exported {total:,}"]
    assert f"(reached #{events[-1].sequence:,} of #{events[-1].sequence:,})" in progress[-1]
