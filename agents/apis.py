from django.conf import settings
from django.core.exceptions import ValidationError
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.dev_identity import ensure_dev_trust_domain, mint_svid
from agents.permissions import IsAgent
from core.errors import Forbidden, InvalidInput

LOOPBACK = ("127.0.0.1", "::1")


class AgentMeApi(APIView):
    permission_classes = [IsAgent]

    @extend_schema_serializer(component_name="Agent")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        spiffe_id = serializers.CharField()
        name = serializers.CharField()
        status = serializers.CharField()
        # Null once its sponsor was deleted (the agent is then orphaned until someone owns it).
        sponsor = serializers.CharField(source="sponsor.username", allow_null=True)
        team = serializers.CharField(source="team.name")
        review_due = serializers.DateField(allow_null=True)
        last_seen_at = serializers.DateTimeField(allow_null=True)
        max_delegation_depth = serializers.IntegerField()

    @extend_schema(
        operation_id="agents_me", responses=OutputSerializer, summary="The authenticated agent"
    )
    def get(self, request):
        agent = request.user.agent
        return Response(self.OutputSerializer(agent).data)


class DevSvidApi(APIView):
    """Development only: a JWT-SVID from the local development trust domain, as `mint_svid`
    prints, so `custody --dev` needs no Django project. Refused with DEBUG off, and to any
    client that is not on this machine."""

    authentication_classes = []
    permission_classes = []
    error_statuses = {403: "DEBUG is off, or the client is not on this machine (`dev_only`)."}

    @extend_schema_serializer(component_name="DevSvidInput")
    class InputSerializer(serializers.Serializer):
        spiffe_id = serializers.CharField(max_length=2048)
        audience = serializers.CharField(
            max_length=200,
            required=False,
            help_text="CUSTODY_AUDIENCE (a login, the default) or CUSTODY_DELEGATION_AUDIENCE "
            "(a sub-agent's actor token for one delegation).",
        )
        ttl_seconds = serializers.IntegerField(required=False, min_value=1, max_value=3600)

    @extend_schema_serializer(component_name="DevSvid")
    class OutputSerializer(serializers.Serializer):
        svid = serializers.CharField()
        spiffe_id = serializers.CharField()
        audience = serializers.CharField()
        expires_in = serializers.IntegerField()

    @extend_schema(
        operation_id="dev_svid_create",
        request=InputSerializer,
        responses={201: OutputSerializer},
        summary="Development only (DEBUG): a JWT-SVID from the local development trust domain",
    )
    def post(self, request):
        if not settings.DEBUG:
            raise Forbidden(
                "Minting development SVIDs is for development only: this Custody runs with "
                "DEBUG off.",
                code="dev_only",
            )
        if request.META.get("REMOTE_ADDR") not in LOOPBACK:
            raise Forbidden(
                "Development SVIDs are minted only for clients on this machine.", code="dev_only"
            )
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        audience = data.get("audience") or settings.CUSTODY_AUDIENCE
        delegation = audience == settings.CUSTODY_DELEGATION_AUDIENCE
        if audience not in (settings.CUSTODY_AUDIENCE, settings.CUSTODY_DELEGATION_AUDIENCE):
            raise InvalidInput(
                f"audience is {settings.CUSTODY_AUDIENCE!r} (a login) or "
                f"{settings.CUSTODY_DELEGATION_AUDIENCE!r} (an actor token).",
                code="invalid_audience",
                fields={"audience": ["Not an audience this Custody accepts."]},
            )
        maximum = (
            settings.CUSTODY_DELEGATION_TOKEN_MAX_SECONDS
            if delegation
            else settings.CUSTODY_LOGIN_TOKEN_MAX_SECONDS
        )
        ttl = min(data.get("ttl_seconds") or 300, maximum)
        try:
            ensure_dev_trust_domain()
            svid = mint_svid(data["spiffe_id"], ttl_seconds=ttl, audience=audience)
        except (ValueError, ValidationError) as exc:
            message = exc.messages[0] if isinstance(exc, ValidationError) else str(exc)
            raise InvalidInput(
                message, code="invalid_spiffe_id", fields={"spiffe_id": [message]}
            ) from exc
        return Response(
            {"svid": svid, "spiffe_id": data["spiffe_id"], "audience": audience, "expires_in": ttl},
            status=status.HTTP_201_CREATED,
        )
