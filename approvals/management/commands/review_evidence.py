"""Campaign evidence for one period: every review opened in it (who reviewed what, when, with
which result) and the controls it answers, as CSV, JSON or a printable HTML report."""

from django.core.management.base import BaseCommand, CommandError
from django.template.loader import render_to_string

from approvals.review_evidence import as_csv, as_json, parse_day, period_refusal, review_campaign


class Command(BaseCommand):
    help = "Export review campaign evidence for a period (CSV, JSON or HTML)."

    def add_arguments(self, parser):
        parser.add_argument("--since", required=True, help="First day, YYYY-MM-DD (UTC).")
        parser.add_argument("--until", required=True, help="Last day, YYYY-MM-DD (UTC).")
        parser.add_argument("--format", choices=["csv", "json", "html"], default="json")

    def handle(self, *args, since, until, format, **options):
        first, last = parse_day(since), parse_day(until)
        refusal = period_refusal(first, last)
        if refusal is not None:
            raise CommandError(refusal.message)
        campaign = review_campaign(since=first, until=last)
        if format == "csv":
            self.stdout.write(as_csv(campaign), ending="")
        elif format == "json":
            self.stdout.write(as_json(campaign))
        else:
            self.stdout.write(
                render_to_string("frontend/review_evidence.html", {"campaign": campaign})
            )
