"""When a person last proved who they are (a password login), for step-up decisions."""

from datetime import datetime

from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.utils import timezone

SESSION_KEY = "custody_authenticated_at"


@receiver(user_logged_in)
def remember_login_time(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        request.session[SESSION_KEY] = timezone.now().isoformat()


def mark_fresh_login(request) -> None:
    request.session[SESSION_KEY] = timezone.now().isoformat()


def authenticated_at(request) -> datetime | None:
    value = request.session.get(SESSION_KEY) if hasattr(request, "session") else None
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
