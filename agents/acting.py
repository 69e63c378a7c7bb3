"""Who is acting in the current web request, for receivers that Django calls without it.

Signals such as `m2m_changed` (a person's groups changed on the admin's user page) carry no
request; the receivers that audit changes of who may approve read the acting person here."""

from __future__ import annotations

import contextvars
from collections.abc import Callable

from django.core.exceptions import PermissionDenied
from django.db import transaction

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

    def process_exception(self, request, exception):
        if isinstance(exception, ApprovalRightRefused):
            with transaction.atomic():  # the refused change itself was rolled back
                exception.record()
        return None  # Django answers 403 with the message


class ApprovalRightRefused(PermissionDenied):
    """Raised by a receiver to refuse a change of who may approve. The change's transaction
    rolls back, so the refusal's evidence is written after it, by the middleware."""

    def __init__(self, message: str, *, record: Callable[[], None]):
        super().__init__(message)
        self.record = record


def acting_person():
    """The signed-in person handling the current request, or None (a shell, a task, an agent)."""
    from django.contrib.auth import get_user_model

    request = _request.get()
    user = getattr(request, "user", None) if request is not None else None
    if isinstance(user, get_user_model()) and user.is_authenticated:
        return user
    return None
