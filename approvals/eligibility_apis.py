"""REST API for eligibility: an agent lists what it may ask for at all, and asks to become
eligible for more (its sponsor decides). One small view per operation."""

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.permissions import IsAgent
from approvals import selectors, services
from approvals.models import Eligibility, EligibilityRequest
from core.errors import InvalidInput


@extend_schema_serializer(component_name="Eligibility")
class EligibilityOutputSerializer(serializers.ModelSerializer):
    privilege = serializers.CharField(source="privilege.name")
    risk = serializers.CharField(source="privilege.risk")
    max_duration_seconds = serializers.SerializerMethodField(
        help_text="The longest one request may ask for: the eligibility's own limit, else the "
        "privilege's maximum."
    )
    environment = serializers.CharField(help_text="Empty: any environment.")

    class Meta:
        model = Eligibility
        fields = [
            "id",
            "privilege",
            "risk",
            "max_duration_seconds",
            "environment",
            "ends_at",
            "granted_by",
            "created_at",
        ]

    def get_max_duration_seconds(self, eligibility) -> int:
        return eligibility.max_duration_seconds or eligibility.privilege.max_duration_seconds


class EligibilityListOutputSerializer(serializers.Serializer):
    results = EligibilityOutputSerializer(many=True)


@extend_schema_serializer(component_name="EligibilityRequest")
class EligibilityRequestOutputSerializer(serializers.ModelSerializer):
    privilege = serializers.CharField(source="privilege.name")
    eligibility_id = serializers.IntegerField(allow_null=True)

    class Meta:
        model = EligibilityRequest
        fields = [
            "id",
            "privilege",
            "status",
            "max_duration_seconds",
            "environment",
            "ends_at",
            "justification",
            "created_at",
            "decided_at",
            "comment",
            "eligibility_id",
        ]


@extend_schema_serializer(component_name="CatalogueEntry")
class PrivilegeOutputSerializer(serializers.Serializer):
    """A catalogue entry for an agent: what it is, and whether (and within what) it may ask."""

    privilege = serializers.CharField(source="privilege.name")
    description = serializers.CharField(source="privilege.description")
    risk = serializers.CharField(source="privilege.risk")
    max_duration_seconds = serializers.SerializerMethodField(
        help_text="The longest one request may ask for: the eligibility's own limit, else the "
        "privilege's maximum."
    )
    approvals_required = serializers.IntegerField(
        source="privilege.approvals_required",
        help_text="People the privilege asks for when policy routes a request to them "
        "(policy may ask more).",
    )
    decision_deadline_seconds = serializers.IntegerField(
        source="privilege.decision_deadline_seconds",
        help_text="How long a request waits for people before it expires.",
    )
    eligible = serializers.SerializerMethodField(
        help_text="True: the agent may ask for it now (POST /api/v1/requests). False: it may "
        "ask to become eligible (POST /api/v1/eligibility/requests)."
    )
    eligibility = EligibilityOutputSerializer(allow_null=True)

    def get_max_duration_seconds(self, entry) -> int:
        if entry.eligibility is not None and entry.eligibility.max_duration_seconds:
            return entry.eligibility.max_duration_seconds
        return entry.privilege.max_duration_seconds

    def get_eligible(self, entry) -> bool:
        return entry.eligibility is not None


class PrivilegeListOutputSerializer(serializers.Serializer):
    results = PrivilegeOutputSerializer(many=True)


class PrivilegeListApi(APIView):
    permission_classes = [IsAgent]

    @extend_schema(
        operation_id="privileges_list",
        parameters=[
            OpenApiParameter(
                "eligible",
                OpenApiTypes.STR,
                enum=["true", "false"],
                description="Only what the agent may ask for now (true), or only what it may "
                "ask to become eligible for (false).",
            )
        ],
        responses=PrivilegeListOutputSerializer,
        summary="The privilege catalogue, each entry with the calling agent's eligibility",
    )
    def get(self, request):
        eligible = request.query_params.get("eligible")
        if eligible not in (None, "true", "false"):
            raise InvalidInput("eligible is 'true' or 'false'.", code="invalid_filter")
        entries = selectors.privilege_catalogue(
            request.user.agent, eligible=None if eligible is None else eligible == "true"
        )
        return Response({"results": PrivilegeOutputSerializer(entries, many=True).data})


class EligibilityListApi(APIView):
    permission_classes = [IsAgent]

    @extend_schema(
        operation_id="eligibility_list",
        responses=EligibilityListOutputSerializer,
        summary="What the calling agent may ask for at all",
    )
    def get(self, request):
        eligibility = selectors.agent_eligibility(request.user.agent)
        return Response({"results": EligibilityOutputSerializer(eligibility[:500], many=True).data})


class EligibilityRequestCreateApi(APIView):
    permission_classes = [IsAgent]
    error_statuses = {
        409: "Already eligible, or a request for this privilege is already pending.",
    }

    @extend_schema_serializer(component_name="EligibilityRequestInput")
    class InputSerializer(serializers.Serializer):
        privilege = serializers.CharField(max_length=201)
        justification = serializers.CharField(max_length=2000)
        max_duration_seconds = serializers.IntegerField(
            required=False, allow_null=True, min_value=1, max_value=7 * 24 * 3600
        )
        environment = serializers.CharField(
            required=False, allow_blank=True, default="", max_length=100
        )
        ends_at = serializers.DateTimeField(required=False, allow_null=True)

    @extend_schema(
        operation_id="eligibility_requests_create",
        request=InputSerializer,
        responses={201: EligibilityRequestOutputSerializer},
        summary="Ask to become eligible for a privilege; the agent's sponsor decides",
    )
    def post(self, request):
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        eligibility_request = services.eligibility_request_submit(
            agent=request.user.agent,
            privilege_name=data["privilege"],
            justification=data["justification"],
            max_duration_seconds=data.get("max_duration_seconds"),
            environment=data.get("environment", ""),
            ends_at=data.get("ends_at"),
        )
        return Response(
            EligibilityRequestOutputSerializer(eligibility_request).data,
            status=status.HTTP_201_CREATED,
        )


class EligibilityRequestDetailApi(APIView):
    permission_classes = [IsAgent]

    @extend_schema(
        operation_id="eligibility_requests_retrieve",
        responses=EligibilityRequestOutputSerializer,
        summary="An eligibility request of the calling agent's, as it stands",
    )
    def get(self, request, eligibility_request_id: int):
        eligibility_request = get_object_or_404(
            selectors.agent_eligibility_requests(request.user.agent), pk=eligibility_request_id
        )
        return Response(EligibilityRequestOutputSerializer(eligibility_request).data)
