"""`make run` on embedded defaults: web, worker and beat answer, and Ctrl-C stops them all."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START_SECONDS = 90
STOP_SECONDS = 20
DEMO_AGENT = "spiffe://dev.custody.internal/agents/invoice-bot"
# What a fresh machine has: none of Custody's variables, and no make or pytest state either.
UNSET = {
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CACHE_URL",
    "DEBUG",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "ALLOWED_HOSTS",
    "DJANGO_SETTINGS_MODULE",
    "MAKEFLAGS",
    "MAKELEVEL",
    "MFLAGS",
}

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(url: str, token: str | None = None) -> int | None:
    request = urllib.request.Request(url)  # noqa: S310 (our own server on loopback)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None  # not listening yet


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def port_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_it_runs_everything_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in UNSET}
    env["CUSTODY_VAR_DIR"] = str(tmp_path / "var")
    log_path = tmp_path / "make-run.log"

    def log_tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])

    with log_path.open("wb") as log:
        # Its own session, so SIGINT can go to the whole group as a terminal's Ctrl-C does.
        process = subprocess.Popen(
            ["make", "run", f"PORT={port}"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while http_status(f"{base}/login/") != 200:
            assert process.poll() is None, f"make run exited early:\n{log_tail()}"
            assert time.monotonic() < deadline, f"no login page in time:\n{log_tail()}"
            time.sleep(0.5)

        minted = subprocess.run(
            [sys.executable, "manage.py", "mint_svid", DEMO_AGENT],
            cwd=ROOT,
            env={**env, "DEBUG": "true"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        while (status := http_status(f"{base}/api/v1/agents/me", token)) != 200:
            assert process.poll() is None, f"make run exited early:\n{log_tail()}"
            assert time.monotonic() < deadline, f"/api/v1/agents/me said {status}:\n{log_tail()}"
            time.sleep(0.5)

        output = log_path.read_text(errors="replace")
        assert f"Custody is starting on {base}/" in output
        assert "admin / custody-admin" in output
        assert "make demo-request" in output

        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=STOP_SECONDS)
        stop_deadline = time.monotonic() + STOP_SECONDS
        while group_alive(process.pid):
            assert time.monotonic() < stop_deadline, f"processes outlived Ctrl-C:\n{log_tail()}"
            time.sleep(0.2)
        assert not port_listening(port)
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
