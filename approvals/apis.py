"""REST API for agents (workload identity) and people (session): one small view per operation."""

import asyncio
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import DatabaseError, connection
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.permissions import IsAgent
from approvals import selectors, services
from approvals.api_outputs import (
    AccessRequestSerializer,
    AccessTokenSerializer,
    DecidedRequestSerializer,
    GrantCredentialStateSerializer,
    IntentSerializer,
    IntrospectionSerializer,
    JwkSetSerializer,
    PendingApprovalListSerializer,
    ToolCallRecordedSerializer,
    grant_credential_state,
)
from approvals.models import AccessRequest, Decision, Grant
from core.api_errors import OAuthErrors
from core.errors import InvalidInput
from core.sessions import authenticated_at, second_factor_at

logger = logging.getLogger(__name__)
MAX_CONTEXT_BYTES = 4096
WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


def _has_nul(value) -> bool:
    """PostgreSQL's text and jsonb cannot hold U+0000: refused as input, never a 500."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def validate_context(value):
    if not isinstance(value, dict):
        raise serializers.ValidationError("context must be a JSON object.")
    if len(json.dumps(value)) > MAX_CONTEXT_BYTES:
        raise serializers.ValidationError(f"context must be under {MAX_CONTEXT_BYTES} bytes.")
    if _has_nul(value):
        raise serializers.ValidationError("context must not contain NUL characters (U+0000).")
    for key in ("environment", "initiated_by"):
        if key in value and not isinstance(value[key], str):
            raise serializers.ValidationError(f"context.{key} must be a string.")
    return value


@extend_schema_serializer(component_name="Grant")
class GrantOutputSerializer(serializers.ModelSerializer):
    privilege = serializers.CharField(source="scope")
    active = serializers.SerializerMethodField()
    ended_reason = serializers.CharField(
        allow_null=True, help_text="Why it ended: expired, completed, revoked, … (null if live)."
    )
    request_id = serializers.IntegerField(source="access_request_id")
    parent_id = serializers.IntegerField(
        allow_null=True, help_text="The grant it was delegated from, if any."
    )
    credential = serializers.SerializerMethodField(
        help_text="Its brokered credential, when one was made (null otherwise); "
        "`destroy_pending` is a revocation not yet confirmed by the target system."
    )

    class Meta:
        model = Grant
        fields = [
            "id",
            "privilege",
            "scope",
            "task_id",
            "issued_at",
            "expires_at",
            "active",
            "revoked_at",
            "ended_reason",
            "request_id",
            "parent_id",
            "depth",
            "credential",
        ]

    def get_active(self, grant) -> bool:
        return grant.is_active()

    @extend_schema_field(GrantCredentialStateSerializer(allow_null=True))
    def get_credential(self, grant) -> dict | None:
        return grant_credential_state(grant)


class GrantListSerializer(serializers.Serializer):
    results = GrantOutputSerializer(many=True)


def request_output(access_request: AccessRequest, *, token=None, submitted=None) -> dict:
    """The request as agents see it. `submitted` (a SubmitResult) answers a fresh submission
    from what the service already holds: no person has decided it yet."""
    if submitted is not None:
        grant, approvals = submitted.grant, 0
    else:
        grant = (
            getattr(access_request, "grant", None) if access_request.status == "approved" else None
        )
        approvals = access_request.approvals_received()
    return {
        "id": access_request.pk,
        "status": access_request.status_now(),
        "privilege": access_request.privilege.name,
        "task_id": access_request.task_id,
        "intent": access_request.intent,
        "duration_seconds": access_request.duration_seconds,
        "decision": {
            "outcome": access_request.policy_outcome,
            "policies": access_request.policy_ids,
            "reason": access_request.policy_reason,
            "final": access_request.final_reason,
        },
        "approvals_required": access_request.approvals_required,
        "approvals_received": approvals,
        # Why that many: counts and the policy's id, never the people (an agent learns how
        # many must agree, not whom to press).
        "approvals_rule": {
            "privilege_asks": access_request.approvals_privilege,
            "policy_asks": access_request.approvals_policy,
            "policy": access_request.approvals_policy_id or None,
            "reason": access_request.approvals_rule,
        },
        # Until when people may decide; the grant's own end is `grant.expires_at`.
        "decision_deadline": access_request.decision_deadline,
        "created_at": access_request.created_at,
        "grant": None
        if grant is None
        else grant_summary(grant, token=token, fresh=submitted is not None),
    }


def token_fields(token) -> dict:
    """An access token as every answer names it (RFC 6749 §5.1): `access_token`, `token_type`
    and `expires_in`, the seconds it has left (so no client compares clocks)."""
    if token is None:
        return {"access_token": None, "token_type": None, "expires_in": None}
    return {
        "access_token": token.token,
        "token_type": "Bearer",
        "expires_in": max(token.expires_at - int(time.time()), 0),
    }


def grant_summary(grant: Grant, *, token=None, fresh: bool = False) -> dict:
    """A request's grant: its end (`expires_at`), and the access token when this answer minted
    one (an automatic approval's 201); otherwise `token_url` mints one. A `fresh` grant, issued
    by this very request, has no brokered credential yet (one is made only when its agent asks
    for it): nothing to read."""
    return {
        "id": grant.pk,
        "scope": grant.scope,
        "expires_at": grant.expires_at,
        "active": grant.is_active(),
        "token_url": f"/api/v1/grants/{grant.pk}/token",
        **token_fields(token),
        "credential": None if fresh else grant_credential_state(grant),
    }


class RequestCreateApi(APIView):
    permission_classes = [IsAgent]
    error_statuses = {
        409: "A request for this privilege and task is already pending or granted.",
        429: "Too many of the agent's requests wait for people (`Retry-After`).",
    }

    # One component name per input: every view names its serializer "InputSerializer".
    @extend_schema_serializer(component_name="RequestInput")
    class InputSerializer(serializers.Serializer):
        privilege = serializers.CharField(max_length=201)
        task_id = serializers.RegexField(
            r"^[\x21-\x7e]{1,200}$",
            max_length=200,
            error_messages={"invalid": "task_id is 1-200 printable characters without spaces."},
        )
        duration_seconds = serializers.IntegerField(min_value=1, max_value=7 * 24 * 3600)
        intent = IntentSerializer()
        context = serializers.JSONField(required=False, default=dict, validators=[validate_context])

    @extend_schema(
        operation_id="requests_create",
        request=InputSerializer,
        responses={201: AccessRequestSerializer},
        summary="Ask for a privilege, stating intent",
        description="Policy decides at once: `approved` (with the grant and its access token), "
        "`pending` (people decide; poll `GET /api/v1/requests/{id}?wait=N`) or `denied` (with "
        "the policy's reason).",
    )
    def post(self, request):
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        result = services.access_request_submit(
            agent=request.user.agent,
            privilege_name=data["privilege"],
            task_id=data["task_id"],
            duration_seconds=data["duration_seconds"],
            intent=dict(data["intent"]),
            context=data["context"],
        )
        return Response(
            request_output(result.access_request, token=result.token, submitted=result),
            status=status.HTTP_201_CREATED,
        )


def _current_request(agent, request_id: int) -> AccessRequest:
    """The agent's request as it stands. Reading writes nothing: a deadline that has passed is
    reported through `status_now()`, and the deadline sweep records the expiry."""
    return get_object_or_404(selectors.agent_requests(agent), pk=request_id)


def _status_between_waits(request_id: int) -> str | None:
    """The request's status now. A long poll outlives its database connection: one that the
    database dropped while we waited (a restart) is replaced once, and an error after that is
    the API's JSON 503."""
    statuses = AccessRequest.objects.filter(pk=request_id).values_list("status", flat=True)
    if connection.in_atomic_block:  # a caller's transaction: never swap its connection
        return statuses.first()
    connection.close_if_unusable_or_obsolete()  # past its age or known broken, as requests do
    try:
        return statuses.first()
    except DatabaseError:
        connection.close()
        return statuses.first()


class RequestDetailApi(APIView):
    permission_classes = [IsAgent]

    @extend_schema(
        operation_id="requests_retrieve",
        responses=AccessRequestSerializer,
        summary="The request as it stands, holding the answer while it is pending",
        parameters=[
            OpenApiParameter(
                "wait",
                OpenApiTypes.INT,
                description="Hold the answer up to this many seconds (at most "
                "CUSTODY_MAX_WAIT_SECONDS) until the request's status moves.",
            )
        ],
    )
    def get(self, request, request_id: int):
        agent = request.user.agent
        wait = request.query_params.get("wait", "0")
        # ASCII digits only: str.isdigit() also accepts "²" and "٣", which int() then refuses.
        if not WHOLE_NUMBER.fullmatch(wait) or int(wait) > settings.CUSTODY_MAX_WAIT_SECONDS:
            raise InvalidInput(
                f"wait is a whole number of seconds, at most {settings.CUSTODY_MAX_WAIT_SECONDS}.",
                code="invalid_wait",
            )
        access_request = _current_request(agent, request_id)
        holding = getattr(request._request, "custody_hold", None)
        if holding is not None and access_request.status_now() == AccessRequest.Status.PENDING:
            # Tell long_poll_request_detail how long to hold the answer: until `wait` ends or
            # the decision deadline passes, whichever is first. It waits without a thread.
            to_deadline = (access_request.decision_deadline - timezone.now()).total_seconds()
            holding["until"] = time.monotonic() + max(0.0, min(int(wait), to_deadline))
        return Response(request_output(access_request))


_request_detail = RequestDetailApi.as_view()
LONG_POLL_CHECK_SECONDS = 0.25


def _moved(request_ids: list[int]) -> set[int]:
    """Which of these requests are no longer pending: one query for every waiting agent."""
    connection.close_if_unusable_or_obsolete()
    moved = AccessRequest.objects.filter(pk__in=request_ids).exclude(
        status=AccessRequest.Status.PENDING
    )
    try:
        return set(moved.values_list("pk", flat=True))
    except DatabaseError:  # a connection the database dropped (a restart): replaced once
        connection.close()
        return set(moved.values_list("pk", flat=True))


class LongPollWaiters:
    """Every long poll of one ASGI worker process, woken by one poller.

    A waiting agent is an asyncio.Event, not a thread: the poller asks the database every
    LONG_POLL_CHECK_SECONDS which of the waited-for requests moved, on one thread of its own
    (one connection per process however many agents wait), and wakes their waiters."""

    def __init__(self):
        self.waiters: dict[int, set[asyncio.Event]] = {}
        self.poller: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="long-poll")
        self.moved = sync_to_async(_moved, thread_sensitive=False, executor=self.executor)

    async def wait(self, request_id: int, until: float) -> None:
        event = asyncio.Event()
        self.waiters.setdefault(request_id, set()).add(event)
        if self.poller is None or self.poller.done():
            self.poller = asyncio.create_task(self._poll())
        try:
            await asyncio.wait_for(event.wait(), max(0.0, until - time.monotonic()))
        except TimeoutError:
            pass
        finally:
            events = self.waiters.get(request_id, set())
            events.discard(event)
            if not events:
                self.waiters.pop(request_id, None)

    async def _poll(self) -> None:
        while self.waiters:
            await asyncio.sleep(LONG_POLL_CHECK_SECONDS)
            try:
                moved = await self.moved(list(self.waiters))
            except Exception:  # the database is away: the waiters' own hold still ends them
                logger.warning("long polls: status check failed; trying again", exc_info=True)
                continue
            for request_id in moved:
                for event in self.waiters.get(request_id, ()):
                    event.set()


_waiters = LongPollWaiters()
_status_in_request_thread = sync_to_async(_status_between_waits)


async def long_poll_request_detail(request, request_id: int):
    """GET /requests/{id}?wait=N without holding a worker thread while it waits.

    Under the ASGI server (gunicorn's uvicorn workers, README "Production") a waiting agent is
    an event asleep on the event loop, and one poller per process checks every waited-for
    request in one query: 50 waiting agents cost no thread, so the web UI and Slack callbacks,
    sync views on threads of their own, never queue behind them. The answer itself is
    RequestDetailApi's, run twice: once to authenticate, validate and learn how long to hold,
    and once, when the status moved or the hold ended, to answer. Under WSGI (runserver, the
    test client) the wait checks on the request's own thread, as before."""
    holding: dict = {}
    request.custody_hold = holding
    response = await sync_to_async(_request_detail)(request, request_id=request_id)
    if "until" not in holding:
        return response
    if isinstance(request, ASGIRequest):
        await _waiters.wait(request_id, holding["until"])
    else:
        while time.monotonic() < holding["until"]:
            await asyncio.sleep(LONG_POLL_CHECK_SECONDS)
            if await _status_in_request_thread(request_id) != AccessRequest.Status.PENDING:
                break
    request.custody_hold = None  # answer as it stands now
    return await sync_to_async(_request_detail)(request, request_id=request_id)


# drf-spectacular documents the endpoint from the view class behind the callback.
long_poll_request_detail.cls = _request_detail.cls
long_poll_request_detail.initkwargs = _request_detail.initkwargs
long_poll_request_detail.csrf_exempt = True


class RequestCancelApi(APIView):
    permission_classes = [IsAgent]
    error_statuses = {409: "The request is no longer pending."}

    @extend_schema(
        operation_id="requests_cancel",
        request=None,
        responses=AccessRequestSerializer,
        summary="Withdraw a pending request",
    )
    def post(self, request, request_id: int):
        access_request = services.access_request_cancel(
            access_request_id=request_id, agent=request.user.agent
        )
        return Response(request_output(access_request))


class GrantListApi(APIView):
    permission_classes = [IsAgent]

    @extend_schema(
        operation_id="grants_list",
        responses=GrantListSerializer,
        summary="The agent's own grants, newest first (at most 200)",
        parameters=[OpenApiParameter("active", OpenApiTypes.STR, enum=["true", "false"])],
    )
    def get(self, request):
        active = request.query_params.get("active")
        if active not in (None, "true", "false"):
            raise InvalidInput("active is 'true' or 'false'.", code="invalid_filter")
        grants = selectors.agent_grants(
            request.user.agent, active=None if active is None else active == "true"
        ).select_related("brokered_credential")  # the brokers app's reverse relation
        return Response({"results": GrantOutputSerializer(grants[:200], many=True).data})


class GrantDetailApi(APIView):
    permission_classes = [IsAgent]

    @extend_schema(
        operation_id="grants_retrieve", responses=GrantOutputSerializer, summary="A grant"
    )
    def get(self, request, grant_id: int):
        grant = get_object_or_404(selectors.agent_grants(request.user.agent), pk=grant_id)
        return Response(GrantOutputSerializer(grant).data)


class GrantTokenApi(APIView):
    permission_classes = [IsAgent]
    error_statuses = {409: "The grant has ended, or policy no longer allows it (and ended it)."}

    @extend_schema(
        operation_id="grants_token",
        request=None,
        responses=AccessTokenSerializer,
        summary="A fresh short-lived access token for a live grant (policy evaluated again)",
    )
    def post(self, request, grant_id: int):
        grant = get_object_or_404(selectors.agent_grants(request.user.agent), pk=grant_id)
        issued = services.grant_token_refresh(grant=grant, agent=request.user.agent)
        response = Response(
            {
                **token_fields(issued),
                "scope": grant.scope,
                "grant_id": grant.pk,
                "grant_expires_at": grant.expires_at,
            }
        )
        # RFC 6749 §5.1: token responses are never cached.
        response["Cache-Control"] = "no-store"
        response["Pragma"] = "no-cache"
        return response


class GrantExtendApi(APIView):
    """More time is a new request linked to the grant, decided like any other."""

    permission_classes = [IsAgent]
    error_statuses = {
        409: "The grant has ended, or an extension of it is already pending.",
        429: "Too many of the agent's requests wait for people (`Retry-After`).",
    }

    @extend_schema_serializer(component_name="GrantExtensionInput")
    class InputSerializer(serializers.Serializer):
        duration_seconds = serializers.IntegerField(min_value=1, max_value=7 * 24 * 3600)
        intent = IntentSerializer()
        context = serializers.JSONField(required=False, default=dict, validators=[validate_context])

    @extend_schema(
        operation_id="grants_extend",
        request=InputSerializer,
        responses={201: AccessRequestSerializer},
        summary="Ask for more time on a live grant",
    )
    def post(self, request, grant_id: int):
        agent = request.user.agent
        grant = get_object_or_404(selectors.agent_grants(agent), pk=grant_id)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        result = services.grant_extension_request(
            grant=grant,
            agent=agent,
            duration_seconds=data["duration_seconds"],
            intent=dict(data["intent"]),
            context=data["context"],
        )
        return Response(
            request_output(result.access_request, token=result.token, submitted=result),
            status=status.HTTP_201_CREATED,
        )


class GrantCompleteApi(APIView):
    permission_classes = [IsAgent]
    error_statuses = {409: "The grant has already ended."}

    @extend_schema(
        operation_id="grants_complete",
        request=None,
        responses=GrantOutputSerializer,
        summary="Task done: end the grant and everything delegated from it",
    )
    def post(self, request, grant_id: int):
        grant = get_object_or_404(selectors.agent_grants(request.user.agent), pk=grant_id)
        grant = services.grant_complete(grant=grant, agent=request.user.agent)
        return Response(GrantOutputSerializer(grant).data)


class GrantToolCallApi(APIView):
    permission_classes = [IsAgent]
    error_statuses = {409: "The grant has ended (the refused call is evidence too)."}

    @extend_schema_serializer(component_name="ToolCallInput")
    class InputSerializer(serializers.Serializer):
        tool = serializers.CharField(max_length=200)
        target = serializers.CharField(max_length=500, allow_blank=True, default="")
        outcome = serializers.ChoiceField(choices=["success", "failure", "error", "started"])
        # What the call did (read, write, …), compared with the privilege's action for drift.
        action = serializers.SlugField(max_length=100, required=False, default="")
        detail = serializers.JSONField(
            required=False, default=None, validators=[lambda v: _small(v, "detail")]
        )

    @extend_schema(
        operation_id="grants_tool_calls_create",
        request=InputSerializer,
        responses={201: ToolCallRecordedSerializer},
        summary="Evidence of a tool call under the grant",
    )
    def post(self, request, grant_id: int):
        grant = get_object_or_404(selectors.agent_grants(request.user.agent), pk=grant_id)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        event, flag = services.tool_call_record(
            grant=grant, agent=request.user.agent, **payload.validated_data
        )
        return Response(
            {
                "sequence": event.sequence,
                "recorded_at": event.occurred_at,
                "drift": services.drift_output(flag),
            },
            status=status.HTTP_201_CREATED,
        )


def _small(value, name):
    if len(json.dumps(value)) > MAX_CONTEXT_BYTES:
        raise serializers.ValidationError(f"{name} must be under {MAX_CONTEXT_BYTES} bytes.")
    if _has_nul(value):
        raise serializers.ValidationError(f"{name} must not contain NUL characters (U+0000).")


class IntrospectApi(OAuthErrors, APIView):
    """RFC 7662 for resource servers, which authenticate with their own workload identity.
    Its errors are RFC 6749 §5.2's (`error`, `error_description`), as OAuth clients expect."""

    permission_classes = [IsAgent]
    error_statuses = {403: "The caller is not a registered resource server."}

    @extend_schema_serializer(component_name="IntrospectionInput")
    class InputSerializer(serializers.Serializer):
        token = serializers.CharField()
        token_type_hint = serializers.CharField(required=False)

    @extend_schema(
        operation_id="introspect",
        request=InputSerializer,
        responses=IntrospectionSerializer,
        summary="RFC 7662: is this token active?",
    )
    def post(self, request):
        token = request.data.get("token") if isinstance(request.data, dict) else None
        if not isinstance(token, str) or not token:
            raise InvalidInput(
                "Send the token to introspect as 'token'.",
                code="invalid_request",
                fields={"token": ["This field is required."]},
            )
        return Response(services.token_introspect(token=token, caller=request.user.agent))


# --- for people (browser session or CLI with a session cookie) -------------------------------


class PersonApi(APIView):
    authentication_classes = [SessionAuthentication]
    permission_classes = [IsAuthenticated]


class PendingApprovalsApi(PersonApi):
    @extend_schema(
        operation_id="approvals_pending_list",
        responses=PendingApprovalListSerializer,
        summary="Requests waiting for the signed-in person's decision (at most 200)",
    )
    def get(self, request):
        pending = list(
            selectors.requests_pending_for(request.user).prefetch_related("decisions")[:200]
        )
        progress = selectors.approval_progress(pending, request.user)
        return Response(
            {
                "results": [
                    {
                        **request_output(access_request),
                        "agent": access_request.agent.spiffe_id,
                        "sponsor": access_request.agent.sponsor_name,
                        "progress": _progress_output(progress[access_request.pk]),
                    }
                    for access_request in pending
                ]
            }
        )


def _progress_output(progress) -> dict:
    """Who decides, for people: by name, and why this person may not when they may not."""
    return {
        "summary": progress.summary,
        "approved_by": progress.approved_by,
        "denied_by": progress.denied_by,
        "waiting_for": progress.waiting_for,
        "initiator": progress.initiator or None,
        "cannot_be_met": progress.cannot_be_met,
        "you_may_decide": not progress.refusal,
        "why_not": progress.refusal or None,
    }


class DecisionCreateApi(PersonApi):
    error_statuses = {
        403: "Not allowed to decide this request (initiator, no approve right, a critical "
        "request without a recent sign-in or second factor), or the CSRF check failed.",
        409: "Already decided by this person, or the request is no longer pending.",
    }

    @extend_schema_serializer(component_name="DecisionInput")
    class InputSerializer(serializers.Serializer):
        verdict = serializers.ChoiceField(choices=Decision.Verdict.values)
        comment = serializers.CharField(
            max_length=2000, required=False, allow_blank=True, default=""
        )

    @extend_schema(
        operation_id="requests_decide",
        request=InputSerializer,
        responses={201: DecidedRequestSerializer},
        summary="A person's approve or deny",
    )
    def post(self, request, request_id: int):
        get_object_or_404(selectors.requests_visible_to(request.user), pk=request_id)
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        result = services.access_request_decide(
            access_request_id=request_id,
            approver=request.user,
            channel=Decision.Channel.API,
            authenticated_at=authenticated_at(request),
            second_factor_at=second_factor_at(request),
            **payload.validated_data,
        )
        access_request = (
            AccessRequest.objects.select_related("privilege", "agent")
            .prefetch_related("decisions")
            .get(pk=result.access_request.pk)
        )
        return Response(
            {
                **request_output(access_request),
                "progress": _progress_output(
                    selectors.progress_of(access_request, viewer=request.user)
                ),
            },
            status=status.HTTP_201_CREATED,
        )


class JwksApi(APIView):
    authentication_classes = []
    permission_classes = []

    @extend_schema(
        operation_id="jwks",
        responses=JwkSetSerializer,
        summary="Custody's current and previous access-token signing keys (public)",
    )
    def get(self, request):
        from approvals.tokens import public_jwks

        response = Response(public_jwks())
        response["Cache-Control"] = "public, max-age=300"
        return response
