from django.db.models import QuerySet
from guardian.shortcuts import get_objects_for_user

from agents.models import Agent


def agents_visible_to(user) -> QuerySet[Agent]:
    """The agents a person may see: admins all, others by object or team permission."""
    if not user.is_authenticated:
        return Agent.objects.none()
    if user.is_superuser:
        return Agent.objects.all()
    return get_objects_for_user(user, "agents.view_agent", klass=Agent, accept_global_perms=True)


def agents_approvable_by(user) -> QuerySet[Agent]:
    if not user.is_authenticated:
        return Agent.objects.none()
    return get_objects_for_user(
        user, "agents.approve_for_agent", klass=Agent, accept_global_perms=False
    )
