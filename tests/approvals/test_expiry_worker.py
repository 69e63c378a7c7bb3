"""Grants end on their own: a real Celery worker and beat, on real Redis, with no test code
calling the tasks."""

import contextlib
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from approvals.models import Grant
from approvals.tasks import SWEEP_BATCH
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals.conftest import long_grants, submit
from tests.workers import RedisServer, Worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@contextlib.contextmanager
def publishing_to(url: str):
    """Point this process's Celery producer at another broker for the duration."""
    import os

    from config.celery import app

    def reset():
        app._pool = None
        app.amqp._producer_pool = None

    # Celery reads CELERY_BROKER_URL from the environment before its configuration (CI sets it).
    previous = app.conf.broker_url, os.environ.get("CELERY_BROKER_URL")
    app.conf.broker_url = os.environ["CELERY_BROKER_URL"] = url
    reset()
    try:
        yield
    finally:
        app.conf.broker_url = previous[0]
        if previous[1] is None:
            del os.environ["CELERY_BROKER_URL"]
        else:
            os.environ["CELERY_BROKER_URL"] = previous[1]
        reset()


def introspect(client, token):
    return client.post("/api/v1/introspect", {"token": token}, format="json").json()


def wait_until(predicate, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def sleep_until(moment):
    remaining = (moment - timezone.now()).total_seconds()
    if remaining > 0:
        time.sleep(remaining)


@pytest.fixture
def worker():
    started = Worker(broker_url=settings.CELERY_BROKER_URL)
    yield started
    started.stop()


def test_a_two_second_grant_is_revoked_within_two_seconds_of_expiry(
    worker, agent_api, privileges, resource_server_api
):
    body = submit(agent_api, duration=2).json()
    grant = Grant.objects.get(pk=body["grant"]["id"])
    assert introspect(resource_server_api, body["grant"]["access_token"])["active"] is True

    sleep_until(grant.expires_at + timedelta(milliseconds=1))
    assert introspect(resource_server_api, body["grant"]["access_token"]) == {"active": False}
    assert wait_until(lambda: Grant.objects.get(pk=grant.pk).revoked_at is not None, 6), (
        worker.output()[-3000:]
    )
    grant.refresh_from_db()
    assert grant.revoke_reason == "expired"
    assert timedelta(0) <= grant.revoked_at - grant.expires_at < timedelta(seconds=2)
    assert AuditEvent.objects.filter(grant_id=grant.pk, verb="grant.expired").count() == 1


def test_an_expiry_task_ends_its_grant_behind_a_backlog_and_a_batch_of_it_in_one_go(
    agent_api, privileges
):
    """More grants are past due than one batch (their ETA messages were lost and no sweep runs):
    a grant's own ETA task still ends it at its time, and the earliest-due batch of the backlog
    with it, in the same transaction."""
    backlog = long_grants(privileges["read"], SWEEP_BATCH + 20, due_in=-timedelta(minutes=5))
    expiry = Worker(broker_url=settings.CELERY_BROKER_URL, queues="expiry", beat=False)
    try:
        grant_id = submit(agent_api, duration=2).json()["grant"]["id"]
        assert wait_until(lambda: Grant.objects.get(pk=grant_id).revoked_at is not None, 8), (
            expiry.output()[-3000:]
        )
        grant = Grant.objects.get(pk=grant_id)
        assert grant.revoke_reason == "expired"
        assert timedelta(0) <= grant.revoked_at - grant.expires_at < timedelta(seconds=1.5)
        ended = Grant.objects.filter(pk__in=backlog, revoked_at__isnull=False)
        assert ended.count() == SWEEP_BATCH
        assert set(ended.values_list("revoked_at", flat=True)) == {grant.revoked_at}
        assert AuditEvent.objects.filter(verb="grant.expired").count() == SWEEP_BATCH + 1
        assert verify_chain().ok
    finally:
        expiry.stop()


def test_the_sweep_ends_a_grant_whose_worker_was_killed(agent_api, privileges, resource_server_api):
    worker = Worker(broker_url=settings.CELERY_BROKER_URL)
    try:
        body = submit(agent_api, duration=3).json()
        grant = Grant.objects.get(pk=body["grant"]["id"])
        time.sleep(0.5)
    finally:
        worker.kill()  # the ETA task dies with it, unacknowledged

    sleep_until(grant.expires_at + timedelta(milliseconds=300))
    # Between expiry and the worker's return, every check already says the grant is over.
    assert Grant.objects.get(pk=grant.pk).revoked_at is None
    assert introspect(resource_server_api, body["grant"]["access_token"]) == {"active": False}
    assert agent_api.get(f"/api/v1/grants/{grant.pk}").json()["active"] is False
    assert agent_api.get("/api/v1/grants?active=true").json()["results"] == []

    returned = Worker(broker_url=settings.CELERY_BROKER_URL, sweep_seconds=1)
    try:
        assert wait_until(lambda: Grant.objects.get(pk=grant.pk).revoked_at is not None, 10), (
            returned.output()[-3000:]
        )
        grant.refresh_from_db()
        assert grant.revoke_reason == "expired"
        # Within one sweep interval (1 s) of the worker's return, plus scheduling slack.
        assert grant.revoked_at.timestamp() - returned.ready_at < 1 + 1.5
    finally:
        returned.stop()
    assert AuditEvent.objects.filter(grant_id=grant.pk, verb="grant.expired").count() == 1


def test_a_redis_restart_during_a_grants_life_loses_nothing_and_doubles_nothing(
    agent_api, privileges, resource_server_api
):
    redis = RedisServer()
    worker = None
    try:
        worker = Worker(broker_url=redis.url, sweep_seconds=1)
        with publishing_to(redis.url):
            bodies = [submit(agent_api, duration=3, task_id=f"t{n}").json() for n in range(3)]
        grants = list(Grant.objects.filter(pk__in=[b["grant"]["id"] for b in bodies]))
        redis.stop()  # the broker goes away, and with it every message it held
        sleep_until(max(g.expires_at for g in grants) + timedelta(milliseconds=200))
        for body in bodies:
            assert introspect(resource_server_api, body["grant"]["access_token"]) == {
                "active": False
            }
        time.sleep(1)
        redis.start()
        back = time.time()
        assert wait_until(
            lambda: (
                not Grant.objects.filter(
                    pk__in=[g.pk for g in grants], revoked_at__isnull=True
                ).exists()
            ),
            15,
        ), worker.output()[-3000:]
        for grant in Grant.objects.filter(pk__in=[g.pk for g in grants]):
            assert grant.revoke_reason == "expired"
            # Ended at its ETA if the worker still held the task, else by the sweep within one
            # interval (1 s) of Redis answering again (plus reconnect slack).
            assert grant.revoked_at.timestamp() <= max(
                grant.expires_at.timestamp() + 1.5, back + 1 + 3
            )
            assert (
                AuditEvent.objects.filter(grant_id=grant.pk)
                .filter(verb__in=["grant.expired", "grant.revoked"])
                .count()
                == 1
            )
        assert verify_chain().ok
    finally:
        if worker:
            worker.stop()
        redis.stop()


def test_the_expiry_worker_survives_a_redis_restart_while_it_holds_eta_tasks(
    agent_api, privileges, resource_server_api
):
    """The production shape: one worker holds the ETA tasks (expiry queue), another runs the
    sweeps with beat. Redis goes away while the expiry worker holds unacknowledged ETA tasks."""
    redis = RedisServer()
    expiry = sweeps = None
    try:
        expiry = Worker(broker_url=redis.url, queues="expiry", beat=False)
        sweeps = Worker(broker_url=redis.url, queues="sweeps", sweep_seconds=1)
        with publishing_to(redis.url):
            bodies = [submit(agent_api, duration=3, task_id=f"held-{n}").json() for n in range(3)]
        grants = list(Grant.objects.filter(pk__in=[b["grant"]["id"] for b in bodies]))
        assert wait_until(lambda: expiry.output().count("expire_grant[") >= 3, 5), expiry.output()
        redis.stop()
        sleep_until(max(g.expires_at for g in grants) + timedelta(seconds=1))
        redis.start()
        back = time.time()

        # Within one sweep interval (1 s) of Redis answering again, plus reconnect (1 s) and
        # scheduling slack.
        assert wait_until(
            lambda: (
                not Grant.objects.filter(
                    pk__in=[g.pk for g in grants], revoked_at__isnull=True
                ).exists()
            ),
            10,
        ), sweeps.output()[-3000:]
        for grant in Grant.objects.filter(pk__in=[g.pk for g in grants]):
            assert grant.revoke_reason == "expired"
            assert grant.revoked_at.timestamp() - back < 1 + 1 + 1.5
            assert AuditEvent.objects.filter(grant_id=grant.pk, verb="grant.expired").count() == 1

        # The worker that held the ETA tasks is still there, and with the sweeps stopped it alone
        # ends a later grant at its time.
        assert expiry.process.poll() is None, expiry.output()[-4000:]
        assert "Unrecoverable error" not in expiry.output()
        sweeps.stop()
        with publishing_to(redis.url):
            later = submit(agent_api, duration=2, task_id="later").json()
        grant = Grant.objects.get(pk=later["grant"]["id"])
        assert wait_until(lambda: Grant.objects.get(pk=grant.pk).revoked_at is not None, 10), (
            expiry.output()[-3000:]
        )
        grant.refresh_from_db()
        assert grant.revoke_reason == "expired"
        assert timedelta(0) <= grant.revoked_at - grant.expires_at < timedelta(seconds=1)
        assert verify_chain().ok
    finally:
        for worker in (expiry, sweeps):
            if worker:
                worker.stop()
        redis.stop()


def test_the_sweeps_end_grants_with_no_expiry_worker_running(
    agent_api, privileges, resource_server_api
):
    """The sweeps have their own queue: with the ETA worker gone, the sweeps worker (and beat)
    alone still end grants within one interval of their expiry."""
    sweeps = Worker(broker_url=settings.CELERY_BROKER_URL, queues="sweeps", sweep_seconds=1)
    try:
        body = submit(agent_api, duration=2).json()
        grant = Grant.objects.get(pk=body["grant"]["id"])
        assert wait_until(lambda: Grant.objects.get(pk=grant.pk).revoked_at is not None, 8), (
            sweeps.output()[-3000:]
        )
        grant.refresh_from_db()
        assert grant.revoke_reason == "expired"
        assert grant.revoked_at - grant.expires_at < timedelta(seconds=1 + 1)
        assert "expire_grant[" not in sweeps.output()  # the sweep did it, not an ETA task
    finally:
        sweeps.stop()


def test_the_sweeps_worker_ends_grants_on_time_while_the_broker_is_down(agent_api, privileges):
    """Its own clock sweeps without the broker: no beat, no Redis, and the grant still ends
    within one sweep interval (1 s) of its expiry."""
    redis = RedisServer()
    sweeps = None
    try:
        sweeps = Worker(broker_url=redis.url, queues="sweeps", beat=False, sweep_seconds=1)
        with publishing_to(redis.url):
            grant_id = submit(agent_api, duration=2).json()["grant"]["id"]
        redis.stop()
        assert wait_until(lambda: Grant.objects.get(pk=grant_id).revoked_at is not None, 8), (
            sweeps.output()[-3000:]
        )
        grant = Grant.objects.get(pk=grant_id)
        assert grant.revoke_reason == "expired"
        assert grant.revoked_at - grant.expires_at < timedelta(seconds=1 + 1)
        assert sweeps.process.poll() is None
    finally:
        if sweeps:
            sweeps.stop()
        redis.stop()
