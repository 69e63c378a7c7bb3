"""Reads about agents, restricted to the person first (django-guardian object permissions)."""

from django.db.models import QuerySet
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user

from agents.models import Agent
from audit.models import AuditEvent
from audit.selectors import audit_event_list
from core.replica import on_primary, reading_replica


def agents_visible_to(user) -> QuerySet[Agent]:
    """The agents a person may see: admins all, others by object or team permission."""
    if not user.is_authenticated:
        return Agent.objects.none()
    if user.is_superuser:
        return Agent.objects.all()
    return get_objects_for_user(user, "agents.view_agent", klass=Agent, accept_global_perms=True)


def agents_review_overdue_for(user) -> QuerySet[Agent]:
    """Active agents the person may see whose sponsor's review is overdue, the oldest first."""
    return (
        agents_visible_to(user)
        .filter(review_due__lt=timezone.localdate(), status=Agent.Status.ACTIVE)
        .select_related("sponsor")
        .order_by("review_due")
    )


def agent_ids_managed_by(user) -> set[int]:
    """The agents the person may suspend or whose grants they may revoke: one query for a whole
    page, not a permission check per row."""
    return set(
        get_objects_for_user(
            user, "agents.manage_agent", klass=Agent, accept_global_perms=True
        ).values_list("pk", flat=True)
    )


def sees_whole_audit_log(user) -> bool:
    return user.is_superuser or user.has_perm("audit.view_auditevent")


def audit_events_visible_to(user, **filters) -> QuerySet[AuditEvent]:
    """The evidence a person may read (audit_event_list's filters): all of it with the audit
    permission, otherwise the events about agents they can see."""
    events = audit_event_list(**filters)
    if not sees_whole_audit_log(user):
        visible = agents_visible_to(user).values("pk")
        if reading_replica():  # who may see what is decided on the primary, not on a copy
            with on_primary():
                visible = list(visible.values_list("pk", flat=True))
        events = events.filter(agent_id__in=visible)
    return events


OWNERSHIP_VERBS = (
    "agent.registered",
    "agent.sponsor_reassigned",
    "agent.team_changed",
    "agent.orphaned",
    "agent.orphan_cleared",
    "agent.sponsor_deleted",
    "agent.ownership_refused",
    "approvers.backup_added",
    "approvers.backup_removed",
)


def agent_ownership_history(agent: Agent) -> QuerySet[AuditEvent]:
    """Who owned the agent when, from the evidence itself: newest first."""
    return AuditEvent.objects.filter(agent_id=agent.pk, verb__in=OWNERSHIP_VERBS).order_by(
        "-sequence"
    )


def agents_orphaned_for(user) -> QuerySet[Agent]:
    """Live orphans the person may see, the longest-orphaned (soonest suspended) first."""
    return (
        agents_visible_to(user)
        .filter(orphaned_at__isnull=False)
        .exclude(status=Agent.Status.RETIRED)
        .select_related("sponsor", "team")
        .order_by("orphaned_at")
    )


def agents_dormant_for(user) -> QuerySet[Agent]:
    """Agents flagged dormant the person may see, the quietest first."""
    return (
        agents_visible_to(user)
        .filter(dormant_at__isnull=False)
        .exclude(status=Agent.Status.RETIRED)
        .select_related("sponsor", "team")
        .order_by("last_seen_at", "pk")
    )
