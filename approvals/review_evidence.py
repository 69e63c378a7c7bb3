"""Campaign evidence for auditors: who reviewed which agent, when, with which result, for one
period, as CSV, JSON or a printable HTML report (the `review_evidence` command and the admins'
web page share this). Each report names the controls it answers: NIST AI RMF GOVERN and the
OWASP Non-Human Identities Top 10 (2025)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Count

from approvals.models import Eligibility, Review
from core.errors import InvalidInput

CONTROLS: tuple[dict, ...] = (
    {
        "framework": "NIST AI RMF 1.0",
        "id": "GOVERN 1.5",
        "text": "Ongoing monitoring and periodic review of the risk management process and its "
        "outcomes are planned, with roles and responsibilities and the frequency of review.",
        "evidence": "Each agent's review cadence follows its riskiest eligibility; every review "
        "row shows its due date, when it was answered and by whom.",
    },
    {
        "framework": "NIST AI RMF 1.0",
        "id": "GOVERN 1.6",
        "text": "Mechanisms are in place to inventory AI systems, resourced according to risk.",
        "evidence": "Every active agent is reviewed; the report lists each agent reviewed.",
    },
    {
        "framework": "NIST AI RMF 1.0",
        "id": "GOVERN 1.7",
        "text": "Processes and procedures are in place for decommissioning and phasing out AI "
        "systems safely.",
        "evidence": "Verdicts 'suspend' and 'retire', and overdue reviews suspended.",
    },
    {
        "framework": "NIST AI RMF 1.0",
        "id": "GOVERN 2.1",
        "text": "Roles and responsibilities and lines of communication related to mapping, "
        "measuring and managing AI risks are documented and clear.",
        "evidence": "The accountable sponsor and operating team of each agent, the reviewer, "
        "escalation to the team, and reassignments.",
    },
    {
        "framework": "OWASP NHI Top 10 (2025)",
        "id": "NHI1",
        "text": "Improper Offboarding.",
        "evidence": "Agents no longer needed are retired or suspended in the review; unanswered "
        "reviews end in the overdue action.",
    },
    {
        "framework": "OWASP NHI Top 10 (2025)",
        "id": "NHI5",
        "text": "Overprivileged NHI.",
        "evidence": "Each eligibility is kept or removed with its use in the period; unused "
        "eligibility is pre-marked for removal.",
    },
)

FIELDS = (
    "review_id",
    "agent_id",
    "agent",
    "spiffe_id",
    "sponsor",
    "team",
    "due",
    "opened_at",
    "escalated_at",
    "status",
    "closed_at",
    "on_time",
    "reviewer",
    "verdict",
    "kept",
    "removed",
    "comment",
)


@dataclass
class Campaign:
    since: date
    until: date  # inclusive
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    controls: tuple[dict, ...] = CONTROLS


def period_refusal(since: date | None, until: date | None) -> InvalidInput | None:
    if since is None or until is None:
        return InvalidInput(
            "Give the period as two dates, since and until (YYYY-MM-DD).", code="invalid_period"
        )
    if until < since:
        return InvalidInput("The period ends before it starts.", code="invalid_period")
    if (until - since).days > 3660:
        return InvalidInput("A period is at most ten years.", code="invalid_period")
    return None


def parse_day(text: str | None) -> date | None:
    try:
        return date.fromisoformat((text or "").strip())
    except ValueError:
        return None


def review_campaign(*, since: date, until: date) -> Campaign:
    """The reviews opened in the period [since, until], oldest first, with a summary."""
    refusal = period_refusal(since, until)
    if refusal is not None:
        raise refusal
    start = datetime.combine(since, time.min, tzinfo=UTC)
    end = datetime.combine(until + timedelta(days=1), time.min, tzinfo=UTC)
    reviews = list(
        Review.objects.filter(opened_at__gte=start, opened_at__lt=end)
        .select_related("agent__sponsor", "agent__team", "reviewer")
        .order_by("opened_at", "pk")
    )
    decided = {int(pk) for review in reviews for pk in review.decisions}
    names = {
        pk: f"{resource}:{action}"
        for pk, resource, action in Eligibility.objects.filter(pk__in=decided).values_list(
            "pk", "privilege__resource", "privilege__action"
        )
    }
    campaign = Campaign(since=since, until=until)
    for review in reviews:
        chosen = {int(pk): choice for pk, choice in review.decisions.items()}

        def named(choice, chosen=chosen):
            return sorted(names[pk] for pk, c in chosen.items() if c == choice)

        closed = review.closed_at
        campaign.rows.append(
            {
                "review_id": review.pk,
                "agent_id": review.agent_id,
                "agent": review.agent.name,
                "spiffe_id": review.agent.spiffe_id,
                "sponsor": review.agent.sponsor_name,
                "team": review.agent.team.name,
                "due": review.due.isoformat(),
                "opened_at": review.opened_at.isoformat(),
                "escalated_at": review.escalated_at.isoformat() if review.escalated_at else "",
                "status": review.status,
                "closed_at": closed.isoformat() if closed else "",
                "on_time": bool(
                    review.status == Review.Status.COMPLETED
                    and closed
                    and closed.date() <= review.due
                ),
                "reviewer": review.reviewer.get_username() if review.reviewer else "",
                "verdict": review.verdict,
                "kept": named("keep"),
                "removed": named("remove"),
                "comment": review.comment,
            }
        )
    by_status = dict(
        Review.objects.filter(opened_at__gte=start, opened_at__lt=end)
        .values_list("status")
        .annotate(n=Count("pk"))
    )
    campaign.summary = {
        "reviews": len(reviews),
        "completed": by_status.get(Review.Status.COMPLETED, 0),
        "expired": by_status.get(Review.Status.EXPIRED, 0),
        "open": by_status.get(Review.Status.OPEN, 0),
        "on_time": sum(row["on_time"] for row in campaign.rows),
        "escalated": sum(bool(row["escalated_at"]) for row in campaign.rows),
        "eligibility_removed": sum(len(row["removed"]) for row in campaign.rows),
        "verdicts": {
            verdict: sum(row["verdict"] == verdict for row in campaign.rows)
            for verdict in Review.Verdict.values
        },
    }
    return campaign


def as_json(campaign: Campaign) -> str:
    return json.dumps(
        {
            "period": {"since": campaign.since.isoformat(), "until": campaign.until.isoformat()},
            "controls": list(campaign.controls),
            "summary": campaign.summary,
            "reviews": campaign.rows,
        },
        indent=2,
        ensure_ascii=False,
    )


def as_csv(campaign: Campaign) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    for row in campaign.rows:
        cells = []
        for name in FIELDS:
            value = row[name]
            if isinstance(value, list):
                value = " ".join(value)
            # Neutralise spreadsheet formula injection in free-text cells.
            if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
                value = f"'{value}"
            cells.append(value)
        writer.writerow(cells)
    return buffer.getvalue()
