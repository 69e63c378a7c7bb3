"""Public, unauthenticated endpoints for external monitors: the latest signed checkpoint and the
key that verifies it. They reveal only a sequence number, a hash, a time and a signature."""

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import checkpoints
from audit.selectors import audit_checkpoint_latest
from core.errors import NotFound


@extend_schema_serializer(component_name="AuditCheckpoint")
class CheckpointSerializer(serializers.Serializer):
    type = serializers.CharField()
    v = serializers.IntegerField()
    issuer = serializers.CharField()
    sequence = serializers.IntegerField(help_text="The last audit event the checkpoint covers.")
    hash = serializers.CharField(help_text="The chain's hash at that event.")
    signed_at = serializers.CharField(help_text="When it was signed (RFC 3339).")
    kid = serializers.CharField()
    signature = serializers.CharField(help_text="Ed25519 over the other fields, base64url.")


class CheckpointKeySerializer(serializers.Serializer):
    kty = serializers.CharField()
    crv = serializers.CharField()
    x = serializers.CharField()
    kid = serializers.CharField()
    alg = serializers.CharField()
    use = serializers.CharField()
    status = serializers.ChoiceField(choices=["current", "retired"])


@extend_schema_serializer(component_name="AuditCheckpointKeySet")
class CheckpointKeySetSerializer(serializers.Serializer):
    keys = CheckpointKeySerializer(many=True)


class CheckpointLatestApi(APIView):
    """The newest published checkpoint, exactly as the JSON Lines file holds it: a monitor
    appends each one it fetches to its own file and runs `verify_audit --against` on it."""

    authentication_classes = []
    permission_classes = []
    error_statuses = {404: "No audit checkpoint has been published yet."}

    @extend_schema(
        operation_id="audit_checkpoint_latest",
        responses=CheckpointSerializer,
        summary="The newest signed audit checkpoint (public)",
    )
    def get(self, request):
        document = audit_checkpoint_latest()
        if document is None:
            raise NotFound("No audit checkpoint has been published yet.")
        response = Response(document)
        response["Cache-Control"] = "no-cache"
        return response


class CheckpointKeyApi(APIView):
    """The Ed25519 public key(s) that sign checkpoints, as a JWKS; monitors pin it."""

    authentication_classes = []
    permission_classes = []

    @extend_schema(
        operation_id="audit_checkpoint_keys",
        responses=CheckpointKeySetSerializer,
        summary="The Ed25519 key(s) that sign audit checkpoints (public)",
    )
    def get(self, request):
        response = Response(checkpoints.public_jwks())
        response["Cache-Control"] = "public, max-age=300"
        return response
