"""When a person last proved who they are, kept in their session: the web UI writes it at sign-in
and step-up (frontend/auth.py); approving a critical request reads it (web and API alike).

Two times are kept: the last proof of any kind (password, single sign-on, second factor), and the
last proof with a second factor (an authenticator code or a passkey)."""

from datetime import datetime

from django.utils import timezone

SESSION_KEY = "custody_authenticated_at"
SECOND_FACTOR_KEY = "custody_second_factor_at"


def mark_fresh_login(request, *, second_factor: bool = False) -> None:
    now = timezone.now().isoformat()
    request.session[SESSION_KEY] = now
    if second_factor:
        request.session[SECOND_FACTOR_KEY] = now


def _read(request, key: str) -> datetime | None:
    value = request.session.get(key) if hasattr(request, "session") else None
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def authenticated_at(request) -> datetime | None:
    return _read(request, SESSION_KEY)


def second_factor_at(request) -> datetime | None:
    return _read(request, SECOND_FACTOR_KEY)
