"""The security-critical beat entries (the sweeps, chain verification, checkpoints, upcoming
expiries: every entry of CELERY_BEAT_SCHEDULE) cannot be switched off silently.

Admin shows them read-only (audit/admin.py). Whatever else changed a row (SQL, a shell), beat
puts it back when it starts: enabled, no end time, no start time, not one-off, its schedule from
settings, and each entry it had to re-enable or repair is evidence (`beat.entry_restored`).
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import PeriodicTask, PeriodicTasks
from django_celery_beat.schedulers import DatabaseScheduler

from audit.services import Actor, record

# The fields an admin or a shell could use to stop an entry running without deleting it.
RESTORED = {"enabled": True, "one_off": False, "expires": None, "start_time": None}


def protected_entry_names() -> frozenset[str]:
    return frozenset(settings.CELERY_BEAT_SCHEDULE)


def restore_protected_entries() -> list[str]:
    """Re-enable and repair Custody's entries; returns the names that needed it (audited)."""
    restored = []
    with transaction.atomic():
        rows = PeriodicTask.objects.select_for_update(no_key=True).filter(
            name__in=protected_entry_names()
        )
        for entry in rows.order_by("pk"):
            changed = {
                field: getattr(entry, field)
                for field, value in RESTORED.items()
                if getattr(entry, field) != value
            }
            if not changed:
                continue
            PeriodicTask.objects.filter(pk=entry.pk).update(**RESTORED)
            record(
                actor=Actor.system("beat"),
                verb="beat.entry_restored",
                data={
                    "entry": entry.name,
                    "task": entry.task,
                    "found": {
                        field: value.isoformat() if hasattr(value, "isoformat") else value
                        for field, value in changed.items()
                    },
                },
            )
            restored.append(entry.name)
        if restored:
            PeriodicTasks.update_changed()
    return restored


class CustodyScheduler(DatabaseScheduler):
    """django-celery-beat's database scheduler, but Custody's entries are re-enabled at start
    (update_or_create rewrites their task and schedule; it never touched `enabled`)."""

    def setup_schedule(self):
        super().setup_schedule()
        if restore_protected_entries():
            # The schedule read above skipped the disabled entries: read it again.
            self.update_from_dict(self.app.conf.beat_schedule)
