"""The embedded broker (`filesystem://`, what `make run` and the SQLite test runs use) delivers
every message once and whole while workers poll the folder as it is written: one process
publishes, two drain the queue at the same time, through the project's Celery app."""

import json
import os
import subprocess
import sys

import pytest

from tests import workers

pytestmark = pytest.mark.slow

MESSAGES = 400

# Each message carries 64 KiB, so writing one takes long enough for a reader to look in between.
PUBLISH = f"""
import django, pathlib, sys
django.setup()
from config.celery import app
with app.connection_for_write() as connection:
    queue = connection.SimpleQueue("file-broker-check")
    for n in range({MESSAGES}):
        queue.put({{"n": n, "filler": "x" * 65536}})
pathlib.Path(sys.argv[1]).touch()
"""

DRAIN = """
import django, json, pathlib, sys, time
django.setup()
from config.celery import app
done = pathlib.Path(sys.argv[1])
received = []
with app.connection_for_read() as connection:
    queue = connection.SimpleQueue("file-broker-check")
    empty_since = None
    while True:
        try:
            message = queue.get_nowait()
        except queue.Empty:
            if not done.exists():
                continue
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since > 1:
                break
            continue
        empty_since = None
        assert len(message.payload["filler"]) == 65536, "a message arrived cut short"
        received.append(message.payload["n"])
        message.ack()
print(json.dumps(received))
"""


def test_every_message_is_delivered_once_and_whole_while_two_workers_poll(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "CUSTODY_VAR_DIR": str(tmp_path),
        "CELERY_BROKER_URL": "filesystem://",
    }
    done = tmp_path / "published"

    def start(script):
        return subprocess.Popen(
            [sys.executable, "-c", script, str(done)],
            cwd=workers.ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # Readers first, so they are polling the folder from the first message on.
    readers = [start(DRAIN), start(DRAIN)]
    publisher = start(PUBLISH)
    outputs = [process.communicate(timeout=120) for process in (publisher, *readers)]
    for process, (_, stderr) in zip((publisher, *readers), outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]

    received = [n for stdout, _ in outputs[1:] for n in json.loads(stdout)]
    assert sorted(received) == list(range(MESSAGES))  # none lost, none twice
    leftovers = [p.name for p in (tmp_path / "broker").rglob("*") if p.is_file()]
    assert [name for name in leftovers if name.endswith(".msg")] == []
