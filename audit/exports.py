"""Streaming exports of the evidence log (JSON Lines and CSV), shared by the CLI and the web."""

import csv
import io
import json
from collections.abc import Iterable, Iterator

from audit.models import AuditEvent
from audit.selectors import EXPORT_FIELDS, audit_event_as_dict


def iter_jsonl(events: Iterable[AuditEvent]) -> Iterator[str]:
    for event in events:
        yield json.dumps(audit_event_as_dict(event), sort_keys=True, ensure_ascii=False) + "\n"


FORMULA_PREFIXES = frozenset("=+-@\t\r")


def _defused(value):
    """Neutralise spreadsheet formula injection in a free-text cell; empty cells stay empty
    (`"" in "=+-"` is true in Python, so the test is on the first character, not a slice)."""
    if isinstance(value, str) and value and value[0] in FORMULA_PREFIXES:
        return f"'{value}"
    return value


def iter_csv(events: Iterable[AuditEvent]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(EXPORT_FIELDS)
    yield flush()
    for event in events:
        row = audit_event_as_dict(event)
        row["data"] = json.dumps(row["data"], sort_keys=True, ensure_ascii=False)
        writer.writerow([_defused(row[name]) for name in EXPORT_FIELDS])
        yield flush()
