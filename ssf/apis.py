"""Shared Signals endpoints: the transmitter's metadata, a resource server's stream and the
RFC 8936 poll."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.permissions import IsAgent
from core.errors import InvalidInput, NotFound
from ssf import services
from ssf.models import EVENTS_SUPPORTED, POLL_METHOD, PUSH_METHOD, Stream


def _url(path: str) -> str:
    return f"{settings.CUSTODY_PUBLIC_URL}{path}"


class TransmitterConfigurationApi(APIView):
    """The SSF transmitter metadata (`/.well-known/ssf-configuration`)."""

    authentication_classes = []
    permission_classes = []

    @extend_schema(
        summary="Shared Signals transmitter metadata",
        responses=inline_serializer(
            "SsfConfiguration",
            {
                "issuer": serializers.CharField(),
                "jwks_uri": serializers.CharField(),
                "delivery_methods_supported": serializers.ListField(),
                "configuration_endpoint": serializers.CharField(),
                "poll_endpoint": serializers.CharField(),
            },
        ),
    )
    def get(self, request):
        response = Response(
            {
                "spec_version": "1_0",
                "issuer": settings.CUSTODY_ISSUER,
                "jwks_uri": _url("/.well-known/jwks.json"),
                "delivery_methods_supported": [PUSH_METHOD, POLL_METHOD],
                "configuration_endpoint": _url("/api/v1/ssf/stream"),
                "poll_endpoint": _url("/api/v1/ssf/poll"),
                "events_supported": list(EVENTS_SUPPORTED),
            }
        )
        response["Cache-Control"] = "public, max-age=300"
        return response


def _stream_of(request) -> Stream:
    stream = Stream.objects.filter(receiver=request.user.agent).first()
    if stream is None:
        raise NotFound(
            "No Shared Signals stream is configured for this workload; an admin adds one.",
            code="no_stream",
        )
    return stream


class StreamApi(APIView):
    """The calling resource server's stream (read-only: admins configure streams)."""

    permission_classes = [IsAgent]
    error_statuses = {404: "No Shared Signals stream is configured for the calling workload."}

    @extend_schema(
        summary="This resource server's Shared Signals stream",
        responses=inline_serializer(
            "SsfStream",
            {
                "stream_id": serializers.CharField(),
                "iss": serializers.CharField(),
                "aud": serializers.CharField(),
                "delivery": serializers.DictField(),
                "events_supported": serializers.ListField(),
                "events_delivered": serializers.ListField(),
                "enabled": serializers.BooleanField(),
                "audiences": serializers.ListField(child=serializers.CharField()),
            },
        ),
    )
    def get(self, request):
        stream = _stream_of(request)
        if stream.delivery == Stream.Delivery.PUSH:
            delivery = {"method": PUSH_METHOD, "endpoint_url": stream.endpoint_url}
        else:
            delivery = {"method": POLL_METHOD, "endpoint_url": _url("/api/v1/ssf/poll")}
        return Response(
            {
                "stream_id": str(stream.pk),
                "iss": settings.CUSTODY_ISSUER,
                "aud": stream.receiver.spiffe_id,
                "delivery": delivery,
                "events_supported": list(EVENTS_SUPPORTED),
                "events_delivered": list(EVENTS_SUPPORTED) if stream.enabled else [],
                "enabled": stream.enabled,
                "audiences": stream.receiver.introspection_audiences,
            }
        )


class PollApi(APIView):
    """RFC 8936: acknowledge processed SETs and receive pending ones."""

    permission_classes = [IsAgent]
    error_statuses = {404: "No Shared Signals stream is configured for the calling workload."}

    @extend_schema_serializer(component_name="SsfPollInput")
    class InputSerializer(serializers.Serializer):
        ack = serializers.ListField(child=serializers.CharField(), required=False)
        setErrs = serializers.DictField(required=False)  # noqa: N815  (RFC 8936's name)
        maxEvents = serializers.IntegerField(required=False, min_value=0)  # noqa: N815
        returnImmediately = serializers.BooleanField(required=False)  # noqa: N815

    @extend_schema(
        request=InputSerializer,
        summary="RFC 8936 poll",
        responses=inline_serializer(
            "SsfPollOutput",
            {"sets": serializers.DictField(), "moreAvailable": serializers.BooleanField()},
        ),
    )
    def post(self, request):
        body = request.data if isinstance(request.data, dict) else None
        if body is None:
            raise InvalidInput(
                "Send a JSON object (RFC 8936 poll request).", code="invalid_request"
            )
        return_immediately = body.get("returnImmediately", False)
        if not isinstance(return_immediately, bool):
            raise InvalidInput("'returnImmediately' is true or false.", code="invalid_request")
        return Response(
            services.security_events_poll(
                receiver=request.user.agent,
                ack=body.get("ack", []),
                errors=body.get("setErrs", {}),
                max_events=body.get("maxEvents", 100),
                return_immediately=return_immediately,
            )
        )
