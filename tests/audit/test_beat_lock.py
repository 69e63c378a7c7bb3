"""One beat dispatches however many are started: the others stand by on the beat lock and one
takes over when the holder dies."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import workers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SENT = "Sending due task"


class Beat:
    def __init__(self, name: str, tmp_path):
        self.log_path = tmp_path / f"beat-{name}.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.test_settings",
            "DATABASE_URL": workers.test_database_url(),
            "CUSTODY_VAR_DIR": str(tmp_path),
            "CELERY_BROKER_URL": "filesystem://",
            "CUSTODY_SWEEP_SECONDS": "1",
        }
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel=INFO"],
                cwd=workers.ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sent(self) -> int:
        return self.output().count(SENT)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_two_beats_started_dispatch_from_one_and_the_other_takes_over(tmp_path):
    beats = [Beat("a", tmp_path), Beat("b", tmp_path)]
    try:
        assert wait_until(lambda: any(beat.sent() >= 3 for beat in beats), 90), "\n".join(
            beat.output()[-3000:] for beat in beats
        )
        leader = max(beats, key=Beat.sent)
        standby = beats[1 - beats.index(leader)]
        assert wait_until(lambda: "standing by" in standby.output(), 60), standby.output()[-3000:]
        sent_before = leader.sent()
        assert wait_until(lambda: leader.sent() >= sent_before + 5, 60)  # sweeps every second
        assert standby.sent() == 0, standby.output()[-3000:]

        leader.kill()  # its database session ends, and with it the lock
        assert wait_until(lambda: standby.sent() >= 3, 60), standby.output()[-3000:]
        assert "holding the beat lock" in standby.output()
    finally:
        for beat in beats:
            beat.stop()
