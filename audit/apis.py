"""Public, unauthenticated endpoints for external monitors: the latest signed checkpoint and the
key that verifies it. They reveal only a sequence number, a hash, a time and a signature."""

from rest_framework.response import Response
from rest_framework.views import APIView

from audit import checkpoints
from audit.selectors import audit_checkpoint_latest
from core.errors import NotFound


class CheckpointLatestApi(APIView):
    """The newest published checkpoint, exactly as the JSON Lines file holds it: a monitor
    appends each one it fetches to its own file and runs `verify_audit --against` on it."""

    authentication_classes = []
    permission_classes = []

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

    def get(self, request):
        response = Response(checkpoints.public_jwks())
        response["Cache-Control"] = "public, max-age=300"
        return response
