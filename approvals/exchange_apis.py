"""RFC 8693 token exchange: an agent holding a grant hands a narrower one to a sub-agent."""

import json

from drf_spectacular.utils import OpenApiRequest, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.permissions import IsAgent
from approvals import services
from approvals.api_outputs import TokenExchangeIssuedSerializer, TokenExchangePendingSerializer
from approvals.apis import IntentSerializer, request_output, token_fields, validate_context
from core.api_errors import OAuthErrors
from core.api_errors import _first_message as first_message
from core.api_errors import _plain as plain
from core.errors import InvalidInput

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def _exchange_body(data) -> dict:
    """The request as one flat dict, whether it came as a form (RFC 8693's own encoding, with
    `intent`/`context` as JSON strings or `intent_*` fields) or as JSON."""
    if hasattr(data, "getlist"):
        body = {key: data.get(key) for key in data}
        for key in ("intent", "context"):
            if isinstance(body.get(key), str):
                try:
                    body[key] = json.loads(body[key])
                except ValueError:
                    raise InvalidInput(
                        f"{key} must be a JSON object.",
                        code="invalid_request",
                        fields={key: ["Not JSON."]},
                    )
    elif isinstance(data, dict):
        body = dict(data)
    else:
        raise InvalidInput("Send a form or a JSON object.", code="invalid_request")
    loose = {
        part: body.pop(f"intent_{part}")
        for part in ("action", "target", "justification")
        if f"intent_{part}" in body
    }
    if loose and "intent" not in body:
        body["intent"] = loose
    return body


class TokenExchangeApi(OAuthErrors, APIView):
    """RFC 8693 token exchange: the agent holding a grant hands a narrower one to a sub-agent.

    The caller authenticates with its own workload identity and must hold the grant behind
    `subject_token`; `actor_token` is the sub-agent's JWT-SVID minted for the delegation audience
    (CUSTODY_DELEGATION_AUDIENCE, never its login SVID), short-lived and accepted once. Granted at
    once (200), the answer is RFC 8693's, with the token for the sub-agent. Waiting for people
    (202), the request belongs to the sub-agent: it polls `GET /api/v1/requests/{request_id}`
    with its own SVID and, once approved, gets its token from the grant's `token_url` (the
    caller cannot see the sub-agent's requests). Errors are RFC 6749 §5.2's (`error`,
    `error_description`), with Custody's envelope under `custody_error`.
    """

    permission_classes = [IsAgent]
    error_statuses = {
        403: "The caller does not hold the subject token's grant, or may not delegate it.",
        409: "The parent grant has ended, or the sub-agent may not receive it now.",
        429: "Too many of the sub-agent's requests wait for people (`Retry-After`).",
    }

    @extend_schema_serializer(component_name="TokenExchangeInput")
    class InputSerializer(serializers.Serializer):
        grant_type = serializers.ChoiceField(choices=[TOKEN_EXCHANGE])
        subject_token = serializers.CharField(max_length=8192)
        subject_token_type = serializers.ChoiceField(choices=[JWT_TOKEN_TYPE, ACCESS_TOKEN_TYPE])
        actor_token = serializers.CharField(max_length=8192)
        actor_token_type = serializers.ChoiceField(choices=[JWT_TOKEN_TYPE])
        scope = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")
        duration_seconds = serializers.IntegerField(
            min_value=1, max_value=7 * 24 * 3600, required=False, default=None
        )
        intent = IntentSerializer()
        task_id = serializers.RegexField(
            r"^[\x21-\x7e]{1,200}$",
            max_length=200,
            required=False,
            default="",
            error_messages={"invalid": "task_id is 1-200 printable characters without spaces."},
        )
        context = serializers.JSONField(required=False, default=dict, validators=[validate_context])

    @extend_schema(
        operation_id="token_exchange",
        request={
            # RFC 8693's own encoding: a form, its `intent` and `context` JSON-encoded fields
            # (or `intent_action`, `intent_target`, `intent_justification`).
            "application/x-www-form-urlencoded": OpenApiRequest(
                InputSerializer,
                encoding={
                    "intent": {"contentType": "application/json"},
                    "context": {"contentType": "application/json"},
                },
            ),
            "application/json": InputSerializer,
        },
        responses={200: TokenExchangeIssuedSerializer, 202: TokenExchangePendingSerializer},
        summary="RFC 8693: delegate a narrower grant to a sub-agent",
    )
    def post(self, request):
        body = _exchange_body(request.data)
        if body.get("grant_type") != TOKEN_EXCHANGE:
            raise InvalidInput(
                f"grant_type must be {TOKEN_EXCHANGE}.",
                code="unsupported_grant_type",
                fields={"grant_type": [f"Only {TOKEN_EXCHANGE} is supported."]},
            )
        payload = self.InputSerializer(data=body)
        if not payload.is_valid():
            raise InvalidInput(
                first_message(payload.errors), code="invalid_request", fields=plain(payload.errors)
            )
        data = payload.validated_data
        result = services.delegation_exchange(
            caller=request.user.agent,
            subject_token=data["subject_token"],
            actor_token=data["actor_token"],
            intent=dict(data["intent"]),
            scope=data["scope"],
            duration_seconds=data["duration_seconds"],
            task_id=data["task_id"],
            context=data["context"],
        )
        access_request = result.access_request
        if result.token is None:
            answer = {
                **request_output(access_request),
                "request_id": access_request.pk,
                "agent": access_request.agent.spiffe_id,
                "poll": f"/api/v1/requests/{access_request.pk}",
            }
            response = Response(answer, status=status.HTTP_202_ACCEPTED)
        else:
            response = Response(
                {
                    **token_fields(result.token),
                    "issued_token_type": ACCESS_TOKEN_TYPE,
                    "scope": result.grant.scope,
                    "grant_id": result.grant.pk,
                    "grant_expires_at": result.grant.expires_at,
                    "request_id": access_request.pk,
                }
            )
        # RFC 6749 §5.1: token responses are never cached.
        response["Cache-Control"] = "no-store"
        response["Pragma"] = "no-cache"
        return response
