"""The error pages people see: Custody's own 400/403/404/500 pages, saying what was refused.

Under /api/ every answer stays the JSON envelope of core.api_errors. An htmx action that is
refused before its view runs (CSRF, a missing object, a permission) gets the sentence alone,
swapped into the page's message area (HX-Retarget), never a whole page inside a table row."""

from __future__ import annotations

import re

from django.http import HttpResponse, HttpResponseServerError
from django.shortcuts import render
from django.template import loader

from core import api_errors

# get_object_or_404's own words name a model class; a person reads the generic sentence instead.
MACHINE_404 = re.compile(r"^No \w+ matches the given query\.$")
NOT_FOUND = "There is nothing here that you can see: the page does not exist, or it is not yours."
FORBIDDEN = "You do not have the right to do this."
BAD_REQUEST = "The request was not valid, so nothing was changed."
CSRF_REFUSED = (
    "This form had expired (or was sent from another site), so nothing was changed. "
    "Reload the page and try again."
)


def _is_api(request) -> bool:
    return request.path.startswith(api_errors.API_PREFIX)


def _refusal(request, *, status: int, title: str, message: str) -> HttpResponse:
    if request.headers.get("HX-Request") == "true":
        response = render(
            request, "frontend/_refusal.html", {"message": message, "status": status}, status=status
        )
        response["HX-Retarget"] = "#messages"
        response["HX-Reswap"] = "innerHTML"
        return response
    return render(request, f"{status}.html", {"title": title, "message": message}, status=status)


def bad_request(request, exception, template_name="400.html"):
    if _is_api(request):
        return api_errors.bad_request(request, exception)
    # A parser's or a host check's words are for the log, not for the person.
    return _refusal(request, status=400, title="Not a valid request", message=BAD_REQUEST)


def permission_denied(request, exception, template_name="403.html"):
    if _is_api(request):
        return api_errors.permission_denied(request, exception)
    return _refusal(
        request, status=403, title="Not allowed", message=str(exception or "") or FORBIDDEN
    )


def page_not_found(request, exception, template_name="404.html"):
    if _is_api(request):
        return api_errors.page_not_found(request, exception)
    said = exception.args[0] if exception is not None and exception.args else None
    message = said if isinstance(said, str) and said and not MACHINE_404.match(said) else NOT_FOUND
    return _refusal(request, status=404, title="Not found", message=message)


def server_error(request, template_name="500.html"):
    if _is_api(request):
        return api_errors.server_error(request)
    # Rendered without the request: the frame's nav, the session and the database may be what
    # failed.
    return HttpResponseServerError(loader.get_template("500.html").render())


def csrf_failure(request, reason=""):
    """Django's CSRF refusal, as a page (or, for htmx, a message) a person understands."""
    if _is_api(request):
        return api_errors.permission_denied(request, None)
    return _refusal(request, status=403, title="Form expired", message=CSRF_REFUSED)
