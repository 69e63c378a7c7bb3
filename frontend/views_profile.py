"""The person's own settings: the time zone every page shows times in."""

from __future__ import annotations

import zoneinfo

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from agents import services as agent_services
from agents.models import SponsorProfile
from audit.services import Actor
from core.errors import DomainError
from frontend.decorators import login_required
from frontend.forms import TimeZoneForm


@login_required
@require_http_methods(["GET", "POST"])
def profile(request):
    current = (
        SponsorProfile.objects.filter(user=request.user).values_list("time_zone", flat=True).first()
        or settings.TIME_ZONE
    )
    form = TimeZoneForm(request.POST or None, initial={"time_zone": current})
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                agent_services.sponsor_profile_set_time_zone(
                    user=request.user,
                    time_zone=form.cleaned_data["time_zone"],
                    actor=Actor.for_user(request.user),
                )
            except DomainError as exc:
                form.add_error("time_zone", exc.message)
            else:
                messages.success(
                    request, f"Times are now shown in {form.cleaned_data['time_zone']}."
                )
                return redirect("profile")
        status = 400
    return render(
        request,
        "frontend/profile.html",
        {"form": form, "zones": sorted(zoneinfo.available_timezones()), "current": current},
        status=status,
    )
