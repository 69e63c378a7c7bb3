"""Metrics and readiness from real processes: gunicorn (two workers, multiprocess metrics) and a
Celery worker with beat, on a redis-server this test starts, and the test database."""

import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from approvals.models import Grant
from tests.approvals.test_database_restart import database_restarting
from tests.config.metrics_text import value
from tests.workers import ROOT, Gunicorn, RedisServer, Worker, free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def wait_for(predicate, timeout: float = 30, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    return predicate()


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


@pytest.fixture
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


def test_the_gauges_move_on_gunicorn_and_the_worker_counts_the_expiry(
    redis_server, agent, signer, privileges
):
    redis_env = {
        "CELERY_BROKER_URL": redis_server.url,
        "CACHE_URL": f"redis://127.0.0.1:{redis_server.port}/1",
    }
    worker_port = free_port()
    worker = Worker(
        broker_url=redis_server.url,
        env={
            **redis_env,
            "CUSTODY_WORKER_METRICS_PORT": str(worker_port),
            "CUSTODY_WORKER_METRICS_ADDRESS": "127.0.0.1",
        },
    )
    web = Gunicorn(env={**redis_env, "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp()})
    try:
        metrics, worker_metrics = f"{web.url}/metrics", f"http://127.0.0.1:{worker_port}/"
        text = scrape(metrics)
        assert value(text, "custody_live_grants") == 0
        assert value(text, "custody_broker_up") == 1

        bearer = {"Authorization": f"Bearer {signer.mint(agent.spiffe_id)}"}
        answers = [
            httpx.post(
                f"{web.url}/api/v1/requests",
                json={
                    "privilege": "payments-db:read",
                    "task_id": f"task-{n}",
                    "duration_seconds": 2 if n == 0 else 600,
                    "intent": {"action": "read", "target": "invoices", "justification": "test"},
                },
                headers=bearer,
                timeout=30,
            )
            for n in range(2)
        ]
        assert [answer.status_code for answer in answers] == [201, 201], answers[0].text
        short = answers[0].json()["grant"]["id"]
        text = scrape(metrics)
        assert value(text, "custody_live_grants") == 2  # a grant issued (two)
        # Both gunicorn workers' requests in one series: the multiprocess directory sums them.
        created = {"route": "api-request-create", "method": "POST", "status": "2xx"}
        assert value(text, "custody_http_request_duration_seconds_count", **created) == 2

        # The worker ends the short grant on time; both scrapes see it.
        assert wait_for(lambda: Grant.objects.get(pk=short).revoked_at is not None)
        text = scrape(metrics)
        assert value(text, "custody_live_grants") == 1  # a grant ended
        assert value(text, "custody_grants_past_expiry") == 0
        assert value(text, "custody_expiry_lag_seconds") == 0
        expiries = {"task": "approvals.tasks.expire_grant", "state": "SUCCESS"}
        assert wait_for(
            lambda: value(scrape(worker_metrics), "custody_celery_tasks_total", 0, **expiries) >= 1
        ), worker.output()[-3000:]
        assert "custody_live_grants" not in scrape(worker_metrics)  # facts come from the web only
    finally:
        web.stop()
        worker.stop()


def _beat_heartbeat_now():
    every = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="heartbeat", task="approvals.tasks.sweep_expired_grants", interval=every
    )
    PeriodicTask.objects.update(last_run_at=timezone.now())


def _probe(web, check: str) -> int:
    """The container probe (deploy/healthcheck.py) against this gunicorn: its exit status."""
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "healthcheck.py"), check],
        env={**os.environ, "PORT": str(web.port), "ALLOWED_HOSTS": "localhost"},
        timeout=60,
        check=False,
    ).returncode


def _readiness(web) -> tuple[int, dict]:
    response = httpx.get(f"{web.url}/readyz", timeout=20)
    return response.status_code, response.json()


def test_readyz_follows_redis_and_the_database_away_and_back(redis_server):
    _beat_heartbeat_now()
    web = Gunicorn(
        env={
            "CELERY_BROKER_URL": redis_server.url,
            "CACHE_URL": f"redis://127.0.0.1:{redis_server.port}/1",
        }
    )
    try:
        status, body = _readiness(web)
        assert status == 200, body
        assert body["status"] == "ready"
        assert set(body["checks"]) == {"database", "cache", "broker", "beat", "signing_key"}
        assert httpx.get(f"{web.url}/healthz").json() == {"status": "alive"}
        assert httpx.get(f"{web.url}/version").json()["version"]
        assert (_probe(web, "web"), _probe(web, "ready")) == (0, 0)

        redis_server.stop()
        status, body = _readiness(web)
        assert status == 503, body
        assert body["checks"]["cache"]["status"] == "failing"
        assert body["checks"]["broker"]["status"] == "failing"
        assert body["checks"]["database"]["status"] == "ok"
        assert httpx.get(f"{web.url}/healthz").status_code == 200  # alive, only not ready
        assert (_probe(web, "web"), _probe(web, "ready")) == (0, 1)

        redis_server.start()
        assert wait_for(lambda: _readiness(web)[0] == 200, timeout=20), _readiness(web)

        with database_restarting():
            status, body = _readiness(web)
            assert status == 503, body
            assert body["checks"]["database"]["status"] == "failing"
            assert body["checks"]["cache"]["status"] == "ok"
        assert wait_for(lambda: _readiness(web)[0] == 200, timeout=20), _readiness(web)
    finally:
        web.stop()


def test_readyz_is_unready_when_beat_has_gone_quiet(settings, client):
    every = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="heartbeat", task="approvals.tasks.sweep_expired_grants", interval=every
    )
    PeriodicTask.objects.update(
        last_run_at=timezone.now() - timedelta(seconds=settings.CUSTODY_BEAT_HEARTBEAT_SECONDS + 5)
    )
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["beat"]["status"] == "failing"
    PeriodicTask.objects.update(last_run_at=timezone.now())
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
