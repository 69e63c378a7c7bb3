"""The agent's one request for its grant's brokered credential."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.permissions import IsAgent
from brokers import services


@extend_schema_serializer(component_name="BrokeredCredentialIssued")
class CredentialIssuedSerializer(serializers.Serializer):
    grant_id = serializers.IntegerField()
    name = serializers.CharField(help_text="The credential's name on the target (e.g. the role).")
    kind = serializers.CharField(help_text="The broker: postgresql, redis, webhook, …")
    expires_at = serializers.DateTimeField(
        help_text="The grant's end: the credential is destroyed then, or sooner if the grant "
        "ends sooner."
    )
    secret = serializers.DictField(
        help_text="What the broker made, e.g. for PostgreSQL username, password, host, port, "
        "dbname, dsn. Shown once: Custody does not keep it."
    )


class GrantCredentialApi(APIView):
    permission_classes = [IsAgent]
    error_statuses = {
        409: "The grant has ended, its privilege has no broker, or its credential was already "
        "delivered (exactly once).",
        502: "The target system refused to make the credential.",
        503: "The target system (or the database) cannot be reached now; `Retry-After` says "
        "when to try again.",
    }

    @extend_schema(
        operation_id="grants_credential",
        request=None,
        responses={201: CredentialIssuedSerializer},
        summary="The grant's real credential on a brokered system, delivered exactly once",
        description="Made on this request (never at rest) and destroyed when the grant ends for "
        "any reason. A second call is 409 `credential_already_delivered`: Custody never keeps "
        "the secret. 503 when the target cannot be reached (this grant's credential is then "
        "spent).",
    )
    def post(self, request, grant_id: int):
        delivered = services.credential_fetch(grant_id=grant_id, agent=request.user.agent)
        credential = delivered.credential
        response = Response(
            {
                "grant_id": credential.grant_id,
                "name": credential.name,
                "kind": credential.kind,
                "expires_at": credential.expires_at,
                "secret": delivered.secret,
            },
            status=status.HTTP_201_CREATED,
        )
        response["Cache-Control"] = "no-store"
        response["Pragma"] = "no-cache"
        return response
