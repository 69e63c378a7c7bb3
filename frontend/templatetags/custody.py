import json
from datetime import UTC

from django import template
from django.utils import timezone
from django.utils.html import conditional_escape, format_html, format_html_join
from django.utils.safestring import mark_safe

from core.formatting import day_words, duration_words, moment_utc, moment_words

register = template.Library()


@register.simple_tag
def when(moment):
    """A time in the person's zone, with the absolute UTC time on hover (and for scripts)."""
    if moment is None:
        return "—"
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        moment.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        moment_utc(moment),
        moment_words(moment, timezone.get_current_timezone()),
    )


@register.filter
def duration(seconds):
    """Seconds (or a timedelta) in words: "30 min", "1 h 30 min", "2 days"."""
    return duration_words(seconds)


@register.simple_tag
def countdown(moment):
    """Time left until `moment` in words, kept current by custody.js."""
    left = max(int((moment - timezone.now()).total_seconds()), 0)
    return format_html(
        '<span class="countdown" data-until="{}" title="until {}">{}</span>',
        moment.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        moment_utc(moment),
        duration_words(left) if left else "ended",
    )


@register.inclusion_tag("frontend/_risk.html")
def risk(level):
    return {"level": level}


def _key_values(value, depth: int) -> str:
    if depth > 8:  # evidence is JSON from our own code; a deeper nesting is shown as text
        return conditional_escape(json.dumps(value, default=str))
    if isinstance(value, dict):
        if not value:
            return format_html('<span class="empty">{}</span>', "none")
        rows = format_html_join(
            "",
            '<tr><th scope="row">{}</th><td>{}</td></tr>',
            ((key, mark_safe(_key_values(item, depth + 1))) for key, item in value.items()),  # noqa: S308 - built with format_html
        )
        return format_html('<table class="kv"><tbody>{}</tbody></table>', rows)
    if isinstance(value, list | tuple):
        if not value:
            return format_html('<span class="empty">{}</span>', "none")
        items = format_html_join(
            "",
            "<li>{}</li>",
            ((mark_safe(_key_values(item, depth + 1)),) for item in value),  # noqa: S308
        )
        return format_html('<ul class="kv-list">{}</ul>', items)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return conditional_escape(str(value))


@register.filter
def key_values(value):
    """JSON data (context, audit data, token claims) as a key–value table, nested dicts and
    lists as nested tables and lists: never a Python repr."""
    return mark_safe(_key_values(value, 0))  # noqa: S308 - every leaf is escaped above


@register.filter
def duration_until(start, end):
    """The time from `start` to `end` in words: a grant's length ("30 min")."""
    if start is None or end is None:
        return "—"
    return duration_words(end - start)


@register.filter
def day(value):
    """A calendar date (a review's due date) in the one date format: "29 Nov 2026"."""
    return day_words(value) if value else "—"


@register.filter
def verb(value: str) -> str:
    """An audit verb that may wrap after its dot (`grant.<wbr>revoked`), never inside a word."""
    family, dot, rest = str(value).partition(".")
    return format_html("{}{}<wbr>{}", family, dot, rest) if dot else conditional_escape(value)
