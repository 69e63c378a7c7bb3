import django_celery_beat.admin as beat_admin  # registers the beat admin replaced below
from django.contrib import admin, messages
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from audit.beat import protected_entry_names
from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = [
        "sequence",
        "occurred_at",
        "actor_type",
        "actor_id",
        "verb",
        "agent_id",
        "access_request_id",
        "grant_id",
    ]
    list_filter = ["verb", "actor_type"]
    search_fields = ["actor_id", "verb"]
    ordering = ["-sequence"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- Beat's schedule: Custody's entries are read-only here (audit/beat.py) --------------------
PROTECTED_NOTE = (
    "{names}: Custody's own schedule (sweeps, chain verification, checkpoints) cannot be "
    "changed, disabled or deleted here; it comes from settings (CUSTODY_*_SECONDS) and beat "
    "restores it when it starts."
)


def _protected(entry) -> bool:
    return entry is not None and entry.name in protected_entry_names()


def _split(modeladmin, request, queryset):
    """The selection without Custody's entries, telling the admin which were left alone."""
    names = sorted(queryset.filter(name__in=protected_entry_names()).values_list("name", flat=True))
    if names:
        modeladmin.message_user(
            request, PROTECTED_NOTE.format(names=", ".join(names)), level=messages.WARNING
        )
    return queryset.exclude(name__in=protected_entry_names())


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class CustodyPeriodicTaskAdmin(beat_admin.PeriodicTaskAdmin):
    def has_change_permission(self, request, obj=None):
        return not _protected(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not _protected(obj) and super().has_delete_permission(request, obj)

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, _split(self, request, queryset))

    @admin.action(description="Disable selected tasks")
    def disable_tasks(self, request, queryset):
        super().disable_tasks(request, _split(self, request, queryset))

    @admin.action(description="Toggle activity of selected tasks")
    def toggle_tasks(self, request, queryset):
        super().toggle_tasks(request, _split(self, request, queryset))


admin.site.unregister(IntervalSchedule)


@admin.register(IntervalSchedule)
class CustodyIntervalScheduleAdmin(beat_admin.IntervalScheduleAdmin):
    """An interval one of Custody's entries runs on is theirs: editing it would slow a sweep."""

    def _in_use(self, schedule) -> bool:
        return (
            schedule is not None
            and schedule.periodictask_set.filter(name__in=protected_entry_names()).exists()
        )

    def has_change_permission(self, request, obj=None):
        return not self._in_use(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return not self._in_use(obj) and super().has_delete_permission(request, obj)
