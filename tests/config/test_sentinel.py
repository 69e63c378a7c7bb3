"""A broker under Redis Sentinel (docs/scaling.md): Custody's settings take the sentinels' URL and
the master's name from the environment, and kombu finds the master through a real sentinel."""

import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from tests.config.test_settings import refusal, start
from tests.workers import RedisServer, free_port

MASTER_NAME = "custody-broker"


class Sentinel:
    """A real `redis-server --sentinel` monitoring `master` under MASTER_NAME."""

    def __init__(self, master: RedisServer):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sentinel-"))
        config = self.dir / "sentinel.conf"  # a sentinel rewrites its own config file
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 1\n"
        )
        self.process = subprocess.Popen(
            ["redis-server", str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.sentinel_get_master_addr_by_name(MASTER_NAME):
                    return
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the sentinel did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def sentinel():
    master = RedisServer()
    watcher = Sentinel(master)
    yield master, watcher
    watcher.stop()
    master.stop()


def publish(tmp_path, sentinel_port: int, master_name: str) -> subprocess.CompletedProcess:
    """Custody's own settings, started with the sentinel's URL, publish one expiry task."""
    code = (
        "from config.health import _broker; _broker(); "
        "from config.celery import app; "
        "app.send_task('approvals.tasks.expire_grant', args=[424242]); print('sent')"
    )
    return start(
        tmp_path,
        code,
        DEBUG="true",
        CELERY_BROKER_URL=f"sentinel://127.0.0.1:{sentinel_port}",
        CELERY_BROKER_SENTINEL_MASTER=master_name,
    )


def test_a_sentinel_url_needs_the_master_name(tmp_path):
    result = start(tmp_path, DEBUG="true", CELERY_BROKER_URL="sentinel://127.0.0.1:26379")
    assert refusal(result) == (
        "CELERY_BROKER_URL names Redis sentinels: set CELERY_BROKER_SENTINEL_MASTER to the name "
        "they monitor the broker's master under (`sentinel monitor <name> ...`)."
    )


def test_the_master_name_joins_the_transport_options_beside_the_visibility_timeout(tmp_path):
    code = (
        "from django.conf import settings; o = settings.CELERY_BROKER_TRANSPORT_OPTIONS; "
        "print(o['master_name'], o['visibility_timeout'] > settings.CUSTODY_ETA_HORIZON_SECONDS)"
    )
    result = start(
        tmp_path,
        code,
        DEBUG="true",
        CELERY_BROKER_URL="sentinel://s1:26379;sentinel://s2:26379",
        CELERY_BROKER_SENTINEL_MASTER=MASTER_NAME,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{MASTER_NAME} True"


def test_tasks_reach_the_master_the_sentinel_names(tmp_path, sentinel):
    master, watcher = sentinel
    result = publish(tmp_path, watcher.port, MASTER_NAME)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "sent"
    queued = redis.Redis(port=master.port).lrange("expiry", 0, -1)
    assert len(queued) == 1
    assert b"approvals.tasks.expire_grant" in queued[0]


def test_a_master_name_the_sentinel_does_not_know_fails_instead_of_guessing(tmp_path, sentinel):
    master, watcher = sentinel
    result = publish(tmp_path, watcher.port, "not-the-broker")
    assert result.returncode != 0
    assert "No master found for 'not-the-broker'" in result.stderr
    assert redis.Redis(port=master.port).llen("expiry") == 0
