from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from agents.selectors import agents_visible_to


@login_required
def dashboard(request):
    agents = agents_visible_to(request.user).select_related("sponsor", "team").order_by("name")
    return render(request, "frontend/dashboard.html", {"agents": agents})
