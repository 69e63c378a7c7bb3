"""How people read numbers and times, the same on the web and in Slack: durations in words
("30 min", "1 h 30 min", "2 days") and one date format ("29 Nov 2026, 15:03 CET")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_UNITS = (
    (86400, "day", "days"),
    (3600, "h", "h"),
    (60, "min", "min"),
    (1, "s", "s"),
)


def duration_words(seconds: int | float | timedelta | None) -> str:
    """A duration as a person says it: its two largest units, rounded down to the second.

    90 → "1 min 30 s", 5400 → "1 h 30 min", 172800 → "2 days", 0 → "0 s"."""
    if seconds is None:
        return "—"
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    left = max(int(seconds), 0)
    if left == 0:
        return "0 s"
    parts: list[str] = []
    for size, one, many in _UNITS:
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count} {one if count == 1 else many}")
        elif parts:
            break  # "1 h 0 min 5 s" reads worse than "1 h"
        if len(parts) == 2:
            break
    return " ".join(parts)


UTC_FORMAT = "%Y-%m-%d %H:%M UTC"


def moment_words(moment: datetime, zone=UTC) -> str:
    """One date format for every page and message: "29 Nov 2026, 15:03 CET" in `zone`."""
    local = moment.astimezone(zone)
    return f"{local.day} {local:%b %Y, %H:%M %Z}"


def moment_utc(moment: datetime) -> str:
    """The same moment as an unambiguous UTC stamp ("2026-11-29 14:03 UTC"), for hovering."""
    return moment.astimezone(UTC).strftime(UTC_FORMAT)


def day_words(day) -> str:
    """A calendar date in the same format: "29 Nov 2026"."""
    return f"{day.day} {day:%b %Y}"
