"""One error shape for the whole API: {"error": {"code", "message", "fields"}}, 4xx and 5xx.

DRF views answer through `exception_handler`; anything else under /api/ (an unknown path, an
error in a middleware, an unexpected exception) through the `handler*` views that config/urls.py
installs, which keep Django's own pages everywhere else. A database that drops or refuses its
connections (a restart) is a 503 with Retry-After, never an HTML "Server Error (500)".

OAuth endpoints (a view with `OAuthErrors`) answer RFC 6749 §5.2's shape instead, which OAuth
clients read: `{"error": "invalid_request", "error_description": "…", "custody_error": {"code",
"message", "fields"}}` — the same envelope, moved under `custody_error`.
"""

import logging
import sys

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.urls import Resolver404, resolve
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from core.errors import DomainError, TooManyRequests, Unavailable

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
# What a client should wait before trying again when the database is away (a restart).
RETRY_AFTER_SECONDS = 2
DATABASE_ERRORS = (OperationalError, InterfaceError)
UNAVAILABLE_MESSAGE = "The database is unavailable for a moment; try again shortly."


def error_response(
    code: str,
    message: str,
    http_status: int,
    fields: dict | None = None,
    headers: dict | None = None,
) -> Response:
    return Response(
        {"error": {"code": code, "message": message, "fields": fields or {}}},
        status=http_status,
        headers=headers,
    )


def _first_message(detail) -> str:
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        inner = _first_message(value)
        return inner if key == "non_field_errors" else f"{key}: {inner}"
    return str(detail)


def _plain(detail):
    if isinstance(detail, dict):
        return {key: _plain(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_plain(value) for value in detail]
    return str(detail)


def exception_handler(exc, context):
    if isinstance(exc, DATABASE_ERRORS):
        logger.error("API request failed on the database: %r", exc, exc_info=exc)
        set_rollback()
        return error_response(
            "service_unavailable",
            UNAVAILABLE_MESSAGE,
            status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, TooManyRequests | Unavailable):
        return error_response(
            exc.code,
            exc.message,
            exc.status_code,
            exc.fields,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, DomainError):
        return error_response(exc.code, exc.message, exc.status_code, exc.fields)
    if isinstance(exc, Http404):
        return error_response("not_found", "Not found.", status.HTTP_404_NOT_FOUND)
    if isinstance(exc, PermissionDenied):
        return error_response("forbidden", str(exc) or "Not allowed.", status.HTTP_403_FORBIDDEN)
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return error_response(
            "invalid", _first_message(detail), status.HTTP_400_BAD_REQUEST, _plain(detail)
        )
    if isinstance(exc, exceptions.AuthenticationFailed | exceptions.NotAuthenticated):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "not_authenticated"
        response = error_response(code, str(exc.detail), status.HTTP_401_UNAUTHORIZED)
        response["WWW-Authenticate"] = 'Bearer realm="custody"'
        return response
    if isinstance(exc, exceptions.APIException):
        response = drf_exception_handler(exc, context)
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        return error_response(
            code,
            _first_message(exc.detail),
            exc.status_code,
            headers=dict(response.items()) if response is not None else None,
        )
    return None


# --- RFC 6749 §5.2 for the OAuth endpoints ---------------------------------------------------

# §5.2's codes, RFC 8693's invalid_target, and §4.1.2.1's for an unavailable or failing server.
OAUTH_ERROR_CODES = (
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "temporarily_unavailable",
    "server_error",
)
_OAUTH_BY_STATUS = {
    401: "invalid_client",
    403: "unauthorized_client",
    409: "invalid_grant",
    429: "temporarily_unavailable",
    503: "temporarily_unavailable",
}


def oauth_error_code(code: str, http_status: int) -> str:
    """The RFC 6749 error code for one of Custody's (code, status) answers."""
    if code in OAUTH_ERROR_CODES:
        return code
    if http_status in _OAUTH_BY_STATUS:
        return _OAUTH_BY_STATUS[http_status]
    return "server_error" if http_status >= 500 else "invalid_request"


def oauth_error_body(envelope: dict, http_status: int) -> dict:
    """RFC 6749 §5.2's body around Custody's envelope `{"code", "message", "fields"}`."""
    return {
        "error": oauth_error_code(envelope["code"], http_status),
        "error_description": envelope["message"],
        "custody_error": envelope,
    }


class OAuthErrors:
    """A DRF view mixin: the view's errors in RFC 6749 §5.2's shape (see the module's doc)."""

    oauth_errors = True

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        envelope = response.data.get("error") if isinstance(response.data, dict) else None
        if isinstance(envelope, dict):
            response.data = oauth_error_body(envelope, response.status_code)
        # RFC 6749 §5.1: token endpoint answers are never cached, refusals included.
        response["Cache-Control"] = "no-store"
        response["Pragma"] = "no-cache"
        return response


def is_oauth_view(request) -> bool:
    """Whether the request is for a view with OAuthErrors (resolved here when a middleware
    answers before Django resolved the path)."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return False
    view_class = getattr(getattr(match, "func", None), "view_class", None)
    return bool(getattr(view_class, "oauth_errors", False))


# --- Django's error views: JSON under /api/, Django's own pages elsewhere --------------------


def _json_error(
    code: str, message: str, http_status: int, headers: dict | None = None, *, oauth=False
):
    envelope = {"code": code, "message": message, "fields": {}}
    body = oauth_error_body(envelope, http_status) if oauth else {"error": envelope}
    response = JsonResponse(body, status=http_status)
    if oauth:
        response["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _is_api(request) -> bool:
    return request.path.startswith(API_PREFIX)


def bad_request(request, exception, template_name="400.html"):
    if _is_api(request):
        return _json_error("bad_request", "The request is not valid.", 400)
    return defaults.bad_request(request, exception, template_name)


def permission_denied(request, exception, template_name="403.html"):
    if _is_api(request):
        return _json_error("forbidden", "Not allowed.", 403)
    return defaults.permission_denied(request, exception, template_name)


def page_not_found(request, exception, template_name="404.html"):
    if _is_api(request):
        return _json_error("not_found", "Not found.", 404)
    return defaults.page_not_found(request, exception, template_name)


def server_error(request, template_name="500.html"):
    if not _is_api(request):
        return defaults.server_error(request, template_name)
    # Django calls this while handling the exception (already logged as "Internal Server Error").
    oauth = is_oauth_view(request)
    if isinstance(sys.exc_info()[1], DATABASE_ERRORS):
        return _json_error(
            "service_unavailable",
            UNAVAILABLE_MESSAGE,
            503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            oauth=oauth,
        )
    return _json_error(
        "server_error", "Something went wrong on our side; it has been logged.", 500, oauth=oauth
    )
