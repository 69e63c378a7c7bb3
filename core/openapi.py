"""The OpenAPI document tells the truth about errors: every operation lists each 4xx/5xx it can
answer, each with the one error envelope (core/api_errors.py) as the named component `Error`.

Statuses that follow from the operation's shape are added here (400 for a body or a query,
401 when it authenticates, 403 for a session's CSRF check, 404 for a path id, 503 for the
database); a view names the rest its rules raise in `error_statuses`, e.g.
`{409: "…", 429: "…"}`. The OAuth endpoints (`oauth_errors` on the view) answer them in RFC 6749
§5.2's shape, the component `OAuthError`."""

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, extend_schema_serializer
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication

from core.api_errors import OAUTH_ERROR_CODES


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, for machines: `invalid`, `not_found`, …")
    message = serializers.CharField(help_text="For people: what went wrong and what to do.")
    fields = serializers.DictField(
        help_text="Per input field, its messages (empty when the error is not about a field)."
    )


@extend_schema_serializer(component_name="Error")
class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


@extend_schema_serializer(component_name="OAuthError")
class OAuthErrorSerializer(serializers.Serializer):
    """RFC 6749 §5.2's error body, which the OAuth endpoints answer (core/api_errors.py)."""

    error = serializers.ChoiceField(
        choices=OAUTH_ERROR_CODES, help_text="RFC 6749 §5.2's code (RFC 8693's invalid_target)."
    )
    error_description = serializers.CharField(
        help_text="For people: what went wrong and what to do."
    )
    custody_error = ErrorDetailSerializer(
        help_text="Custody's error envelope, as every other endpoint answers it under `error`."
    )


DEFAULT_DESCRIPTIONS = {
    400: "The input is not valid: `error.fields` names each field and why.",
    401: "No credential, or one that is refused (`WWW-Authenticate: Bearer`).",
    403: "Authenticated, but not allowed to do this.",
    404: "Nothing by that id that the caller may see.",
    409: "The thing is no longer in a state that allows this.",
    413: "The body is larger than Custody accepts (DATA_UPLOAD_MAX_MEMORY_SIZE, 64 KiB default).",
    429: "Too many; `Retry-After` says when trying again can succeed.",
    503: "The database is unavailable for a moment; `Retry-After` says when to try again.",
}


def error_response(description: str, *, oauth: bool = False) -> OpenApiResponse:
    serializer = OAuthErrorSerializer if oauth else ErrorSerializer
    return OpenApiResponse(serializer, description=description)


ERROR_HEADERS = {
    401: {
        "WWW-Authenticate": {
            "required": True,
            "schema": {"type": "string"},
            "description": 'The scheme to authenticate with: `Bearer realm="custody"`.',
        }
    },
    429: {
        "Retry-After": {
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
            "description": "Seconds until trying again can succeed.",
        }
    },
    503: {
        "Retry-After": {
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
            "description": "Seconds to wait before trying again.",
        }
    },
}


class CustodyAutoSchema(AutoSchema):
    def _error_statuses(self) -> dict[int, str]:
        view = self.view
        statuses: dict[int, str] = {503: DEFAULT_DESCRIPTIONS[503]}
        if self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None:
            statuses[400] = DEFAULT_DESCRIPTIONS[400]
        if self.method in ("POST", "PUT", "PATCH"):
            # core.middleware.BodySizeLimitMiddleware refuses oversize bodies before any view.
            statuses[413] = DEFAULT_DESCRIPTIONS[413]
        if any(parameter.get("in") == "query" for parameter in self._get_parameters()):
            statuses[400] = DEFAULT_DESCRIPTIONS[400]
        authenticators = list(getattr(view, "authentication_classes", []))
        if authenticators:
            statuses[401] = DEFAULT_DESCRIPTIONS[401]
        if self.method == "POST" and any(
            issubclass(authenticator, SessionAuthentication) for authenticator in authenticators
        ):
            statuses[403] = "The CSRF check failed (send `X-CSRFToken`), or not allowed."
        if "{" in self.path:
            statuses[404] = DEFAULT_DESCRIPTIONS[404]
        statuses.update(getattr(view, "error_statuses", {}))
        return statuses

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        oauth = getattr(self.view, "oauth_errors", False)
        for code, description in sorted(self._error_statuses().items()):
            answer = responses.setdefault(
                str(code),
                self._get_response_for_code(error_response(description, oauth=oauth), str(code)),
            )
            if code in ERROR_HEADERS:
                answer.setdefault("headers", {}).update(ERROR_HEADERS[code])
        return responses
