"""Custody's beat entries (the sweeps, chain verification, checkpoints) cannot be switched off
silently: admin shows them read-only, and beat re-enables them when it starts, as evidence."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from audit.beat import restore_protected_entries
from audit.models import AuditEvent
from config.celery import app as celery_app
from tests import workers

CHANGELIST = "/admin/django_celery_beat/periodictask/"


def install_schedule():
    """The entries as beat writes them when it starts (the scheduler itself closes the database
    connection, so in a test transaction its two steps are called: the entries, the restore)."""
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        ModelEntry.from_entry(name, app=celery_app, **entry)
    restore_protected_entries()


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def schedule(db):
    install_schedule()
    return {
        entry.name: entry
        for entry in PeriodicTask.objects.filter(name__in=settings.CELERY_BEAT_SCHEDULE)
    }


@pytest.mark.django_db
def test_it_installs_every_custody_entry_enabled(schedule):
    assert set(schedule) == set(settings.CELERY_BEAT_SCHEDULE)
    assert all(entry.enabled for entry in schedule.values())


@pytest.mark.django_db
def test_admin_shows_custody_entries_read_only(admin_client, schedule):
    sweep = schedule["sweep-expired-grants"]
    page = admin_client.get(f"{CHANGELIST}{sweep.pk}/change/")
    assert page.status_code == 200
    assert b'name="enabled"' not in page.content  # a view, not a form
    answer = admin_client.post(
        f"{CHANGELIST}{sweep.pk}/change/",
        {"name": sweep.name, "task": sweep.task, "enabled": "", "interval": sweep.interval_id},
    )
    assert answer.status_code == 403
    assert admin_client.post(f"{CHANGELIST}{sweep.pk}/delete/", {"post": "yes"}).status_code == 403
    sweep.refresh_from_db()
    assert sweep.enabled


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["disable_tasks", "toggle_tasks", "delete_selected"])
def test_bulk_actions_leave_custody_entries_alone(admin_client, schedule, action):
    mine = PeriodicTask.objects.create(
        name="someone-elses",
        task="celery.backend_cleanup",
        interval=schedule["verify-audit-chain"].interval,
    )
    selected = [str(entry.pk) for entry in schedule.values()] + [str(mine.pk)]
    data = {"action": action, ACTION_CHECKBOX_NAME: selected, "post": "yes"}
    answer = admin_client.post(CHANGELIST, data, follow=True)
    if action == "delete_selected":
        assert answer.status_code == 403  # Django's own check: not the right to delete them all
    else:
        assert answer.status_code == 200
        assert b"cannot be changed, disabled or deleted here" in answer.content
    assert PeriodicTask.objects.filter(name__in=schedule, enabled=True).count() == len(schedule)
    if action != "delete_selected":
        assert not PeriodicTask.objects.filter(pk=mine.pk, enabled=True).exists()


@pytest.mark.django_db
def test_the_interval_a_sweep_runs_on_is_read_only(admin_client, schedule):
    interval = schedule["sweep-expired-grants"].interval
    url = f"/admin/django_celery_beat/intervalschedule/{interval.pk}/change/"
    answer = admin_client.post(url, {"every": 86400, "period": "seconds"})
    assert answer.status_code == 403
    interval.refresh_from_db()
    assert interval.every == settings.CUSTODY_SWEEP_SECONDS
    assert b'name="every"' not in admin_client.get(url).content
    spare = IntervalSchedule.objects.create(every=7, period="days")
    url = f"/admin/django_celery_beat/intervalschedule/{spare.pk}/change/"
    assert b'name="every"' in admin_client.get(url).content  # anyone else's stays editable


@pytest.mark.django_db
def test_the_start_up_restore_re_enables_and_audits(schedule):
    PeriodicTask.objects.filter(name="verify-audit-chain").update(enabled=False)
    PeriodicTask.objects.filter(name="publish-audit-checkpoint").update(one_off=True)
    install_schedule()
    assert PeriodicTask.objects.filter(
        name__in=schedule, enabled=True, one_off=False
    ).count() == len(schedule)
    events = AuditEvent.objects.filter(verb="beat.entry_restored").order_by("sequence")
    assert [event.data["entry"] for event in events] == [
        "verify-audit-chain",
        "publish-audit-checkpoint",
    ] or {event.data["entry"] for event in events} == {
        "verify-audit-chain",
        "publish-audit-checkpoint",
    }
    assert events.get(data__entry="verify-audit-chain").data["found"] == {"enabled": False}
    assert events.get(data__entry="verify-audit-chain").actor_id == "beat"
    install_schedule()  # nothing to restore: nothing recorded
    assert AuditEvent.objects.filter(verb="beat.entry_restored").count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_real_beat_process_re_enables_a_disabled_sweep(tmp_path):
    install_schedule()
    PeriodicTask.objects.filter(name="sweep-expired-grants").update(enabled=False)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "DATABASE_URL": workers.test_database_url(),
        "CUSTODY_VAR_DIR": str(tmp_path),
        "CELERY_BROKER_URL": "filesystem://",
    }
    with open(tmp_path / "beat.log", "w") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel=INFO"],
            cwd=workers.ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        restored = AuditEvent.objects.filter(
            verb="beat.entry_restored", data__entry="sweep-expired-grants"
        )
        for _ in range(600):  # until beat has started (or died)
            if restored.exists() or beat.poll() is not None:
                break
            time.sleep(0.1)
        assert restored.exists(), (tmp_path / "beat.log").read_text()
        assert PeriodicTask.objects.get(name="sweep-expired-grants").enabled
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(beat.pid, signal.SIGTERM)
        try:
            beat.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(beat.pid, signal.SIGKILL)
            beat.wait(timeout=10)
