"""`manage.py export_audit`: the evidence log as a file. It lives in agents, not audit, because
`--agent` takes a SPIFFE ID, which only agents knows (audit imports no app above it)."""

import time
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from agents.models import Agent
from audit.exports import export_rows, iter_csv, iter_jsonl
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
        parser.add_argument(
            "--progress-every",
            type=int,
            default=100_000,
            metavar="N",
            help="print progress to stderr every N events (0: never); the events go to stdout",
        )

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
        selected = audit_event_list(since=since, agent_id=agent_id)
        # The newest sequence now: progress is "reached #N of #M", without counting 10M rows.
        last = selected.order_by("-sequence").values_list("sequence", flat=True).first() or 0
        events = self._counted(export_rows(selected), options["progress_every"], last)
        lines = iter_csv(events) if options["format"] == "csv" else iter_jsonl(events)
        for line in lines:
            self.stdout.write(line, ending="")
        self._report(self.exported, last, final=True)

    def _counted(self, events, every: int, last: int):
        """The events, counted as they stream (a server-side cursor: constant memory)."""
        self.exported, self.started = 0, time.monotonic()
        for event in events:
            yield event
            self.exported += 1
            self.reached = event["sequence"]
            if every and self.exported % every == 0:
                self._report(self.exported, last)

    def _report(self, exported: int, last: int, final: bool = False) -> None:
        seconds = max(time.monotonic() - self.started, 1e-9)
        reached = getattr(self, "reached", 0)
        prefix = "Exported" if final else "  exported"
        self.stderr.write(
            f"{prefix} {exported:,} events (reached #{reached:,} of #{last:,}) in "
            f"{seconds:.1f} s, {exported / seconds:,.0f} events/s"
        )
