"""Posture at a glance, for admins and the security team (staff, or the `agents.view_posture`
permission; anyone else gets 404): agents by status, orphans, dormant agents, overdue reviews,
grants by risk per day, the auto-approve ratio, the median time to a decision and the top
requesters. Charts are server-rendered SVG (no script, no inline style: CSP), every number links
to the list behind it. The figures come from approvals/selectors_posture.py; this module only
lays them out (bar geometry in SVG user units)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import Http404
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent
from approvals import selectors_posture as posture
from approvals.models import AccessRequest, Risk
from core.replica import replica_reads
from frontend.decorators import login_required

# The chart's drawing box, in SVG user units (the SVG scales to its container's width).
CHART_WIDTH, CHART_HEIGHT = 600, 160
BAR_ROW = 28  # height of one horizontal bar's row


def may_see_posture(user) -> bool:
    return user.is_authenticated and (
        user.is_staff or user.is_superuser or user.has_perm("agents.view_posture")
    )


def _link(name: str, **query) -> str:
    return f"{reverse(name)}?{urlencode(query)}" if query else reverse(name)


def _horizontal_bars(rows: list[dict]) -> dict:
    """Rows of {label, value, href, css}: each with its bar's width, and the chart's height."""
    largest = max((row["value"] for row in rows), default=0) or 1
    for index, row in enumerate(rows):
        row["y"] = index * BAR_ROW
        row["width"] = round(row["value"] / largest * CHART_WIDTH * 0.5, 1)
        row["text_x"] = round(CHART_WIDTH * 0.4 + row["width"] + 6, 1)
    return {"rows": rows, "height": len(rows) * BAR_ROW, "width": CHART_WIDTH}


def _stacked_days(days: list[dict]) -> dict:
    """Per day a column of rectangles, one per risk (low at the bottom)."""
    tallest = max((sum(day["by_risk"].values()) for day in days), default=0) or 1
    step = CHART_WIDTH / max(len(days), 1)
    columns = []
    for index, day in enumerate(days):
        bottom = CHART_HEIGHT
        parts = []
        for risk in Risk.values:
            issued = day["by_risk"][risk]
            if not issued:
                continue
            height = round(issued / tallest * CHART_HEIGHT, 1)
            bottom = round(bottom - height, 1)
            parts.append({"risk": risk, "issued": issued, "y": bottom, "height": height})
        columns.append(
            {
                "day": day["day"],
                "x": round(index * step + 1, 1),
                "width": round(step - 2, 1),
                "total": sum(day["by_risk"].values()),
                "parts": parts,
            }
        )
    totals = {risk: sum(day["by_risk"][risk] for day in days) for risk in Risk.values}
    return {
        "columns": columns,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "tallest": tallest if days and any(c["total"] for c in columns) else 0,
        "totals": [
            {"risk": risk, "issued": totals[risk], "href": _link("grants", risk=risk)}
            for risk in Risk.values
        ],
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "no decisions yet"
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def posture_context(now) -> dict:
    agents = posture.posture_agent_counts(today=timezone.localdate(now))
    status_rows = [
        {
            "label": label,
            "value": agents.by_status[status],
            "href": _link("agents", status=status),
            "css": f"bar-{status}",
        }
        for status, label in Agent.Status.choices
    ]
    flags = [
        {
            "label": "Orphaned",
            "value": agents.orphaned,
            "href": _link("agents", flag="orphaned"),
            "css": "bar-flag",
        },
        {
            "label": "Dormant",
            "value": agents.dormant,
            "href": _link("agents", flag="dormant"),
            "css": "bar-flag",
        },
        {
            "label": "Review overdue",
            "value": agents.review_overdue,
            "href": _link("agents", flag="review_overdue"),
            "css": "bar-flag",
        },
    ]
    outcomes = posture.posture_outcomes(now=now)
    submitted = sum(outcomes.values())
    outcome_rows = [
        {
            "label": label,
            "value": outcomes[outcome],
            "href": _link("audit", verb="policy.evaluated"),
            "css": f"bar-outcome-{outcome}",
        }
        for outcome, label in AccessRequest.Outcome.choices
    ]
    requesters = [
        {
            "label": row["agent__name"],
            "value": row["requests"],
            "href": reverse("agent", args=[row["agent_id"]]),
            "css": "bar-requests",
        }
        for row in posture.posture_top_requesters(now=now)
    ]
    auto = outcomes[AccessRequest.Outcome.AUTO_APPROVE]
    return {
        "period_days": posture.PERIOD_DAYS,
        "status_chart": _horizontal_bars(status_rows),
        "flags": flags,
        "flag_chart": _horizontal_bars([dict(flag) for flag in flags]),
        "grants_chart": _stacked_days(posture.posture_grants_by_day(now=now)),
        "outcome_chart": _horizontal_bars(outcome_rows),
        "submitted": submitted,
        "auto_ratio": round(auto / submitted * 100) if submitted else None,
        "auto_approved": auto,
        "median_decision": _duration(posture.posture_median_decision_seconds(now=now)),
        "decisions_href": _link("audit", verb="decision.recorded"),
        "requester_chart": _horizontal_bars(requesters),
        "drift": posture.posture_drift(now=now),
        "drift_href": _link("audit", verb="grant.drift_flagged"),
    }


@login_required
def posture_dashboard(request):
    if not may_see_posture(request.user):  # on the primary: a decision about a person's rights
        raise Http404
    with replica_reads():  # aggregates of evidence and history (the nav renders from the primary)
        context = posture_context(timezone.now())
    return render(request, "frontend/posture.html", context)
