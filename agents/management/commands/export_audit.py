"""`manage.py export_audit`: the evidence log as a file. It lives in agents, not audit, because
`--agent` takes a SPIFFE ID, which only agents knows (audit imports no app above it)."""

from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from agents.models import Agent
from audit.exports import iter_csv, iter_jsonl
from audit.selectors import audit_event_list


def parse_since(value: str) -> datetime:
    """An ISO date or date-time; UTC unless it names a zone."""
    try:
        since = parse_datetime(value)
        if since is None and (day := parse_date(value)) is not None:
            since = datetime(day.year, day.month, day.day)
    except ValueError:  # well formed but not a real date, e.g. 2025-02-30
        since = None
    if since is None:
        raise CommandError(
            f"--since {value!r} is not an ISO date or date-time (e.g. 2025-01-31 or "
            "2025-01-31T09:00:00+00:00)."
        )
    if timezone.is_naive(since):
        since = since.replace(tzinfo=UTC)
    return since


class Command(BaseCommand):
    help = "Stream audit events as JSON Lines or CSV."

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
        parser.add_argument("--since", help="ISO date or date-time (UTC unless it names a zone)")
        parser.add_argument("--agent", help="SPIFFE ID or numeric id of the agent")

    def handle(self, *args, **options):
        since = parse_since(options["since"]) if options["since"] else None
        agent_id = None
        if options["agent"]:
            agent = (
                Agent.objects.filter(pk=int(options["agent"])).first()
                if options["agent"].isdecimal()
                else Agent.objects.filter(spiffe_id=options["agent"]).order_by("-pk").first()
            )
            if agent is None:
                raise CommandError(f"No agent {options['agent']!r} is registered.")
            agent_id = agent.pk
        events = audit_event_list(since=since, agent_id=agent_id).iterator(chunk_size=2000)
        lines = iter_csv(events) if options["format"] == "csv" else iter_jsonl(events)
        for line in lines:
            self.stdout.write(line, ending="")
