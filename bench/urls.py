"""Custody's URLs plus the benchmark floor: never mounted by config.urls (production)."""

from django.db import connection, transaction
from django.urls import path
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.authentication import WorkloadIdentityAuthentication
from agents.permissions import IsAgent
from audit.services import Actor, record
from config.urls import urlpatterns as custody_urlpatterns

FLOOR_TABLE = "bench_floor"


class FloorApi(APIView):
    """The floor: the same workload-identity authentication as the API, then one INSERT."""

    authentication_classes = [WorkloadIdentityAuthentication]
    permission_classes = [IsAgent]

    def post(self, request):
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {FLOOR_TABLE} (agent_id) VALUES (%s) RETURNING id",
                [request.user.agent.pk],
            )
            (row_id,) = cursor.fetchone()
        return Response({"id": row_id}, status=status.HTTP_201_CREATED)


class FloorAuditApi(FloorApi):
    """The floor plus one audit event in the same transaction: what the chain head alone costs
    (bench/sweep.py compares it with the floor as connections grow)."""

    def post(self, request):
        agent = request.user.agent
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {FLOOR_TABLE} (agent_id) VALUES (%s) RETURNING id", [agent.pk]
            )
            (row_id,) = cursor.fetchone()
            record(
                actor=Actor.for_agent(agent),
                verb="tool.called",
                agent_id=agent.pk,
                data={"tool": "bench.floor", "row": row_id},
            )
        return Response({"id": row_id}, status=status.HTTP_201_CREATED)


urlpatterns = [
    path("bench/floor", FloorApi.as_view(), name="bench-floor"),
    path("bench/floor-audit", FloorAuditApi.as_view(), name="bench-floor-audit"),
    *custody_urlpatterns,
]
