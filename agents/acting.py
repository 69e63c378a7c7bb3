"""Who is acting in the current web request, for receivers that Django calls without it.

Signals such as `m2m_changed` (a person's groups changed on the admin's user page) carry no
request; the receivers that audit changes of who may approve read the acting person here."""

from __future__ import annotations

import contextvars

_request: contextvars.ContextVar = contextvars.ContextVar("custody_acting_request", default=None)


class ActingPersonMiddleware:
    """After AuthenticationMiddleware: remembers the request for the length of its handling."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


def acting_person():
    """The signed-in person handling the current request, or None (a shell, a task, an agent)."""
    from django.contrib.auth import get_user_model

    request = _request.get()
    user = getattr(request, "user", None) if request is not None else None
    if isinstance(user, get_user_model()) and user.is_authenticated:
        return user
    return None
