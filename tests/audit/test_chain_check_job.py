"""Verification at 10M events: incremental from the newest signed checkpoint (what it sees, and
what only --full sees), and "Verify now" as one job in a worker that reports progress."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent, ChainCheck
from audit.verification import chain_check_execute, chain_check_start
from tests.audit import test_checkpoints
from tests.audit.test_checkpoints import append, as_the_owner, broken, verify, wait_until
from tests.factories import UserFactory
from tests.workers import Worker

pytestmark = pytest.mark.django_db
# The eight events with checkpoints after the third and the sixth (registered as `history`).
checkpointed_history = test_checkpoints.history


def edit_in_place(cursor, sequence: int, verb: str) -> None:
    """An insider's edit that leaves every hash as it was."""
    cursor.execute("UPDATE audit_auditevent SET verb = %s WHERE sequence = %s", [verb, sequence])


def test_the_incremental_walk_starts_at_the_newest_checkpoint(checkpointed_history):
    events, _ = checkpointed_history
    assert verify().startswith(
        f"Audit chain intact: 2 events verified after the signed checkpoint at sequence "
        f"{events[5].sequence}"
    )


def test_it_catches_an_edit_after_the_last_checkpoint(checkpointed_history):
    events, _ = checkpointed_history
    with as_the_owner() as cursor:
        edit_in_place(cursor, events[6].sequence, "grant.revoked")

    assert broken() == (
        f"Audit chain broken at sequence {events[6].sequence}: content does not match its hash "
        "(0 events verified before it)."
    )


def test_it_catches_an_edit_of_the_checkpointed_event_itself(checkpointed_history):
    events, _ = checkpointed_history
    with as_the_owner() as cursor:
        edit_in_place(cursor, events[5].sequence, "grant.revoked")

    assert broken().startswith(
        f"Audit chain broken at sequence {events[5].sequence}: content does not match its hash"
    )


def test_an_edit_before_the_last_checkpoint_that_kept_every_hash_needs_full(checkpointed_history):
    """The documented limit: the checkpoint at N vouches for what was there when it was signed;
    an edit before N that recomputes nothing breaks a link only the full walk reads."""
    events, _ = checkpointed_history
    with as_the_owner() as cursor:
        edit_in_place(cursor, events[1].sequence, "grant.revoked")

    assert verify().startswith("Audit chain intact: 2 events verified after the signed checkpoint")
    assert broken(full=True) == (
        f"Audit chain broken at sequence {events[1].sequence}: content does not match its hash "
        f"({events[0].sequence} events verified before it)."
    )


def test_the_walk_reports_its_progress_as_it_goes():
    append(12)
    total = AuditEvent.objects.count()
    check, created = chain_check_start(mode=ChainCheck.Mode.FULL)
    assert created
    seen = []

    def watch(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith('UPDATE "audit_chaincheck"') and "verified" in sql:
            seen.append(ChainCheck.objects.values_list("state", "verified").get(pk=check.pk))
        return result

    with connection.execute_wrapper(watch):
        chain_check_execute(check.pk, batch_size=5)

    running = [verified for state, verified in seen if state == ChainCheck.State.RUNNING]
    assert running == list(range(5, total, 5)) + [total]
    assert seen[-1] == (ChainCheck.State.DONE, total)


def test_a_walk_whose_worker_died_no_longer_blocks_the_next(settings):
    stuck, _ = chain_check_start()
    assert chain_check_start() == (stuck, False)
    ChainCheck.objects.filter(pk=stuck.pk).update(
        updated_at=timezone.now()
        - timedelta(seconds=settings.CUSTODY_CHAIN_CHECK_STALE_SECONDS + 1)
    )

    fresh, created = chain_check_start()

    assert created and fresh.pk != stuck.pk
    stuck.refresh_from_db()
    assert stuck.state == ChainCheck.State.ABANDONED
    assert stuck.problem == "the worker stopped reporting progress"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_concurrent_verify_now_clicks_start_one_job_that_a_worker_finishes(settings):
    append(30)
    auditor = UserFactory(username="auditor", is_staff=True, is_superuser=True)
    clicks = 4
    barrier = threading.Barrier(clicks)
    statuses = []

    def click():
        browser = Client()
        browser.force_login(auditor)
        barrier.wait()
        statuses.append(browser.post("/audit/verify/").status_code)
        connection.close()

    threads = [threading.Thread(target=click) for _ in range(clicks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [302] * clicks
    assert ChainCheck.objects.count() == 1
    # The worker starts once every click has landed: with it already running, a loaded machine
    # let it finish the first job before the last click arrived, which then rightly started a
    # second (a job that is done is no longer running). The job waits in the queue till then.
    worker = Worker(broker_url=settings.CELERY_BROKER_URL, beat=False, queues="notifications")
    try:
        assert wait_until(lambda: ChainCheck.objects.get().state == ChainCheck.State.DONE, 60), (
            worker.output()[-3000:]
        )
    finally:
        worker.stop()

    check = ChainCheck.objects.get()
    assert check.ok and check.verified == AuditEvent.objects.count() and check.finished_at
    browser = Client()
    browser.force_login(auditor)
    status = browser.get("/audit/verify/status/").content.decode()
    assert f"Chain verified: {check.verified} events intact" in status
    assert "every 2s" not in status
