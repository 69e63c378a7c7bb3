from rest_framework.permissions import BasePermission

from agents.authentication import AuthenticatedAgent


class IsAgent(BasePermission):
    """Only an agent authenticated by workload identity; people use the session endpoints."""

    message = "This endpoint is for agents authenticated with workload identity."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.user, AuthenticatedAgent)
