"""Reads: what an agent or a person may see, restricted before anything else happens."""

from django.db.models import Q, QuerySet
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user

from agents.models import Agent
from agents.selectors import agents_visible_to
from approvals.models import AccessRequest, Grant


def agent_requests(agent: Agent) -> QuerySet[AccessRequest]:
    return AccessRequest.objects.filter(agent=agent).select_related("privilege", "agent")


def agent_grants(agent: Agent, *, active: bool | None = None) -> QuerySet[Grant]:
    grants = Grant.objects.filter(agent=agent).select_related("privilege").order_by("-issued_at")
    if active is True:
        grants = grants.filter(revoked_at__isnull=True, expires_at__gt=timezone.now())
    elif active is False:
        grants = grants.filter(Q(revoked_at__isnull=False) | Q(expires_at__lte=timezone.now()))
    return grants


def _approvable_agents(user) -> QuerySet[Agent]:
    return get_objects_for_user(
        user,
        "agents.approve_for_agent",
        klass=Agent,
        with_superuser=False,
        accept_global_perms=False,
    )


def requests_visible_to(user) -> QuerySet[AccessRequest]:
    """Requests for agents the person can see, or can approve (object or approver group)."""
    if not user.is_authenticated:
        return AccessRequest.objects.none()
    if user.is_superuser:
        return AccessRequest.objects.all()
    return AccessRequest.objects.filter(
        Q(agent__in=agents_visible_to(user))
        | Q(agent__in=_approvable_agents(user))
        | Q(privilege__approver_group__in=user.groups.all())
    )


def requests_pending_for(user) -> QuerySet[AccessRequest]:
    """The person's inbox: pending requests they may decide and have not decided yet."""
    if not user.is_authenticated:
        return AccessRequest.objects.none()
    return (
        AccessRequest.objects.filter(
            status=AccessRequest.Status.PENDING, decision_deadline__gt=timezone.now()
        )
        .filter(
            Q(agent__in=_approvable_agents(user))
            | Q(privilege__approver_group__in=user.groups.all())
        )
        .exclude(decisions__approver=user)
        .select_related("agent", "agent__sponsor", "privilege")
        .order_by("decision_deadline", "pk")
    )


def grants_visible_to(user) -> QuerySet[Grant]:
    if not user.is_authenticated:
        return Grant.objects.none()
    if user.is_superuser:
        return Grant.objects.all()
    return Grant.objects.filter(agent__in=agents_visible_to(user))
