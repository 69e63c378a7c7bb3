"""The periodic enqueuer hands every grant that came within the ETA horizon to the broker in one
run, however many came at once (10^5 after a beat outage), and two enqueuers at once send each
grant's expiry task once."""

import threading
from datetime import timedelta

import pytest
import redis
from django.db import connection

from approvals import tasks
from approvals.models import Grant
from tests.approvals.conftest import long_grants
from tests.approvals.test_expiry_worker import publishing_to
from tests.workers import RedisServer


@pytest.fixture
def broker():
    server = RedisServer()
    try:
        with publishing_to(server.url):
            yield redis.Redis.from_url(server.url)
    finally:
        server.stop()


def queued(broker) -> list[int]:
    import json

    ids = []
    for raw in broker.lrange("expiry", 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "approvals.tasks.expire_grant"
        ids.append(message["headers"]["argsrepr"])
    return ids


@pytest.mark.django_db
def test_it_enqueues_every_grant_within_the_horizon_in_one_run(privileges, broker, monkeypatch):
    monkeypatch.setattr(tasks, "ENQUEUE_BATCH", 10)  # 25 grants take three batches
    due = long_grants(privileges["read"], 25, due_in=timedelta(minutes=30))
    later = long_grants(privileges["read"], 1, due_in=timedelta(days=1))

    assert tasks.enqueue_upcoming_expiries() == 25

    assert set(
        Grant.objects.filter(expiry_enqueued_at__isnull=False).values_list("pk", flat=True)
    ) == set(due)
    assert sorted(queued(broker)) == sorted(f"[{pk}]" for pk in due)
    assert Grant.objects.get(pk=later[0]).expiry_enqueued_at is None
    assert tasks.enqueue_upcoming_expiries() == 0  # a rerun sends nothing twice
    assert broker.llen("expiry") == 25


@pytest.mark.django_db(transaction=True)
def test_two_enqueuers_at_once_send_each_expiry_once(privileges, broker, monkeypatch):
    monkeypatch.setattr(tasks, "ENQUEUE_BATCH", 20)
    due = long_grants(privileges["read"], 200, due_in=timedelta(minutes=30))
    start = threading.Barrier(2)
    sent = []

    def enqueuer():
        try:
            start.wait()
            sent.append(tasks.enqueue_upcoming_expiries())
        finally:
            connection.close()

    threads = [threading.Thread(target=enqueuer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(sent) == len(due)
    assert sorted(queued(broker)) == sorted(f"[{pk}]" for pk in due)
    assert not Grant.objects.filter(pk__in=due, expiry_enqueued_at__isnull=True).exists()
