"""Grants as they stand now. The grants page and the dashboard's "Active grants" card poll a
small fragment (htmx, every few seconds), so a grant that ends (revoked, expired, cascaded)
leaves "Active now", and loses its Revoke button, without a reload."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.db.models.functions import Coalesce
from django.shortcuts import render
from django.utils import timezone

from agents.selectors import agent_ids_managed_by
from approvals import selectors
from approvals.models import Risk
from frontend.decorators import login_required

DASHBOARD_ACTIVE = 10


def dashboard_active_context(user) -> dict:
    active = (
        selectors.grants_visible_to(user)
        .live(timezone.now())
        .select_related("agent", "privilege")
        .order_by("expires_at")
    )
    return {"active": active[:DASHBOARD_ACTIVE], "active_count": active.count()}


def grants_context(user, risk: str = "") -> dict:
    now = timezone.now()
    visible = selectors.grants_visible_to(user).select_related(
        "agent", "privilege", "parent__agent"
    )
    if risk in Risk.values:  # the posture page's links: /grants/?risk=high
        visible = visible.filter(privilege__risk=risk)
    else:
        risk = ""
    active = visible.live(now).order_by("expires_at")
    ended = list(
        visible.filter(
            Q(revoked_at__gte=now - timedelta(days=1))
            | Q(
                revoked_at__isnull=True,
                expires_at__lte=now,
                expires_at__gte=now - timedelta(days=1),
            )
        ).order_by(Coalesce("revoked_at", "expires_at").desc())[:100]
    )
    details = selectors.grant_ending_details(g.pk for g in ended if g.revoked_at is not None)
    for grant in ended:
        grant.ending_detail = details.get(grant.pk, "")
        # Who ended it, as the evidence names them: a person's username, the agent itself
        # (task completed), or Custody (expiry, cascades, the kill switch).
        by = grant.revoked_by
        grant.ended_by = (
            grant.agent.name
            if by == grant.agent.spiffe_id
            else "Custody"
            if by in ("", "custody")
            else by
        )
    return {
        "active": active[:200],
        "ended": ended,
        "managed": agent_ids_managed_by(user),
        "risk": risk,
    }


@login_required
def grants(request):
    template = "frontend/_grants_live.html" if request.htmx else "frontend/grants.html"
    return render(request, template, grants_context(request.user, request.GET.get("risk", "")))


@login_required
def dashboard_active(request):
    return render(
        request, "frontend/_dashboard_active.html", dashboard_active_context(request.user)
    )
