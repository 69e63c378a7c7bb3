from datetime import UTC

from django import template
from django.utils import timezone
from django.utils.html import format_html

register = template.Library()


@register.simple_tag
def when(moment):
    """A time in the person's zone, with the absolute UTC time on hover (and for scripts)."""
    if moment is None:
        return "—"
    local = timezone.localtime(moment)
    utc = moment.astimezone(UTC)
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        utc.isoformat(),
        f"{utc:%Y-%m-%d %H:%M:%S} UTC",
        f"{local:%Y-%m-%d %H:%M %Z}",
    )


@register.simple_tag
def countdown(moment):
    """Time left until `moment`, kept current by custody.js."""
    seconds = max(int((moment - timezone.now()).total_seconds()), 0)
    minutes, rest = divmod(seconds, 60)
    utc = moment.astimezone(UTC)
    return format_html(
        '<span class="countdown" data-until="{}" title="{} UTC">{}</span>',
        utc.isoformat(),
        f"{utc:%Y-%m-%d %H:%M:%S}",
        f"{minutes}m {rest:02d}s",
    )


@register.inclusion_tag("frontend/_risk.html")
def risk(level):
    return {"level": level}
