"""The page frame's own endpoints: the nav's pending badge, refreshed in place by htmx."""

from django.shortcuts import render
from django.views.decorators.http import require_GET

from frontend.decorators import login_required


@login_required
@require_GET
def pending_badge(request):
    """The nav's badge (and, out of band, the narrow-screen menu button's copy of it)."""
    response = render(request, "frontend/_pending_badges.html")
    response["Cache-Control"] = "no-store"
    return response
