from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.permissions import IsAgent


class AgentMeApi(APIView):
    permission_classes = [IsAgent]

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        spiffe_id = serializers.CharField()
        name = serializers.CharField()
        status = serializers.CharField()
        # Null once its sponsor was deleted (the agent is then orphaned until someone owns it).
        sponsor = serializers.CharField(source="sponsor.username", allow_null=True)
        team = serializers.CharField(source="team.name")
        review_due = serializers.DateField()
        last_seen_at = serializers.DateTimeField()
        max_delegation_depth = serializers.IntegerField()

    @extend_schema(responses=OutputSerializer, summary="The authenticated agent")
    def get(self, request):
        agent = request.user.agent
        return Response(self.OutputSerializer(agent).data)
