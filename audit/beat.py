"""The security-critical beat entries (the sweeps, chain verification, checkpoints, upcoming
expiries: every entry of CELERY_BEAT_SCHEDULE) cannot be switched off silently.

Admin shows them read-only (audit/admin.py). Whatever else changed a row (SQL, a shell), beat
puts it back when it starts: enabled, no end time, no start time, not one-off, its schedule from
settings, and each entry it had to re-enable or repair is evidence (`beat.entry_restored`).

One beat dispatches, however many are started (two nodes, a deploy overlapping the old one): a
beat dispatches only while it holds the beat lock, a PostgreSQL session advisory lock on a
connection of its own (a file lock under CUSTODY_VAR_DIR on SQLite, one machine). The others
stand by and try again every LOCK_RETRY_SECONDS; when the holder dies its session ends, the
lock is free, and a standby takes over, reading the schedule (the last runs) from the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django_celery_beat.models import PeriodicTask, PeriodicTasks
from django_celery_beat.schedulers import DatabaseScheduler

from audit.services import Actor, record

logger = logging.getLogger(__name__)

# Any number not used by another session-level advisory lock of Custody's: "BEAT".
BEAT_LOCK_KEY = 0x42454154
# A standby tries for the lock this often; the holder checks its lock connection as often.
LOCK_RETRY_SECONDS = 2.0

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


class BeatLock:
    """Held by at most one beat process at a time, released when that process or its database
    session ends. `held()` is cheap to call on every tick."""

    def __init__(self):
        self._connection = None
        self._file = None
        self._checked = 0.0

    def held(self) -> bool:
        if self._connection is None and self._file is None:
            return self._acquire()
        if self._file is not None:
            return True
        if time.monotonic() - self._checked < LOCK_RETRY_SECONDS:
            return True
        try:  # a session lock lives as long as its session: is the session still there?
            with self._connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            self._checked = time.monotonic()
            return True
        except DatabaseError:
            logger.warning(
                "beat: lost the connection that held the beat lock; standing by",
                extra={"event": "beat.lock_lost"},
            )
            self.release()
            return self._acquire()

    def _acquire(self) -> bool:
        if connections["default"].vendor != "postgresql":
            return self._acquire_file()
        wrapper = connections.create_connection("default")
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [BEAT_LOCK_KEY])
                acquired = cursor.fetchone()[0]
        except DatabaseError as exc:
            logger.warning("beat: could not ask for the beat lock (%s); standing by", exc)
            wrapper.close()
            return False
        if not acquired:
            wrapper.close()
            return False
        self._connection, self._checked = wrapper, time.monotonic()
        return True

    def _acquire_file(self) -> bool:
        path = Path(settings.VAR_DIR) / "beat.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(DatabaseError):
                self._connection.close()
            self._connection = None
        if self._file is not None:
            self._file.close()
            self._file = None


class CustodyScheduler(DatabaseScheduler):
    """django-celery-beat's database scheduler, but Custody's entries are re-enabled at start
    (update_or_create rewrites their task and schedule; it never touched `enabled`), and it
    dispatches only while it holds the beat lock."""

    def __init__(self, *args, **kwargs):
        self.beat_lock = BeatLock()
        self._role = None  # "lead" or "standby", once known
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs):
        if not self.beat_lock.held():
            if self._role != "standby":
                logger.info(
                    "beat: another beat holds the beat lock; standing by",
                    extra={"event": "beat.standby"},
                )
                self._role = "standby"
            return LOCK_RETRY_SECONDS
        if self._role != "lead":
            logger.info("beat: holding the beat lock; dispatching", extra={"event": "beat.lead"})
            self._role = "lead"
            # Whatever another beat ran meanwhile is in the database: read the schedule again.
            self._initial_read = True
            self._heap = None
        return super().tick(*args, **kwargs)

    def close(self):
        try:
            super().close()
        finally:
            self.beat_lock.release()

    def setup_schedule(self):
        super().setup_schedule()
        if restore_protected_entries():
            # The schedule read above skipped the disabled entries: read it again.
            self.update_from_dict(self.app.conf.beat_schedule)
