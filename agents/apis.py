from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.permissions import IsAgent


class AgentMeApi(APIView):
    permission_classes = [IsAgent]

    @extend_schema_serializer(component_name="Agent")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        spiffe_id = serializers.CharField()
        name = serializers.CharField()
        status = serializers.CharField()
        sponsor = serializers.CharField(source="sponsor.username")
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
