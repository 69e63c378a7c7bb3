"""When a person last proved who they are, kept in their session: the web UI writes it at sign-in
and step-up (frontend/auth.py); approving a critical request reads it (web and API alike)."""

from datetime import datetime

from django.utils import timezone

SESSION_KEY = "custody_authenticated_at"


def mark_fresh_login(request) -> None:
    request.session[SESSION_KEY] = timezone.now().isoformat()


def authenticated_at(request) -> datetime | None:
    value = request.session.get(SESSION_KEY) if hasattr(request, "session") else None
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
