"""The log format follows DEBUG (people read `make run`'s lines) unless CUSTODY_LOG_FORMAT says
otherwise; Sentry reports only when SENTRY_DSN is set, and without people's data."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import workers
from tests.config.test_settings import ROOT, STRONG_KEY, refusal, start
from tests.workers import free_port

PRODUCTION = {"SECRET_KEY": STRONG_KEY, "ALLOWED_HOSTS": "custody.example"}
LOG_A_LINE = (
    "import logging; from core import log_context; "
    "log_context.replace({'request_id': 'r-1', 'grant_id': 7}); "
    "logging.getLogger('custody.security').warning('refused %s', 'x', extra={'why': 'y'})"
)


def test_it_logs_json_lines_outside_debug(tmp_path):
    result = start(tmp_path, LOG_A_LINE, **PRODUCTION)
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(line) for line in result.stderr.splitlines()]
    assert line["level"] == "WARNING"
    assert line["logger"] == "custody.security"
    assert line["message"] == "refused x"
    assert (line["request_id"], line["grant_id"], line["why"]) == ("r-1", 7, "y")
    assert "time" in line


def test_it_logs_plain_lines_for_people_under_debug(tmp_path):
    result = start(tmp_path, LOG_A_LINE, DEBUG="true")
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    assert " WARNING custody.security: refused x [request_id=r-1 grant_id=7]" in line
    assert not line.startswith("{")


def test_the_format_can_be_chosen_either_way(tmp_path):
    plain = start(tmp_path, LOG_A_LINE, CUSTODY_LOG_FORMAT="plain", **PRODUCTION)
    assert "refused x [request_id=r-1 grant_id=7]" in plain.stderr
    as_json = start(tmp_path, LOG_A_LINE, CUSTODY_LOG_FORMAT="json", DEBUG="true")
    assert json.loads(as_json.stderr.splitlines()[0])["request_id"] == "r-1"
    assert refusal(start(tmp_path, CUSTODY_LOG_FORMAT="xml", **PRODUCTION)) == (
        "CUSTODY_LOG_FORMAT must be json or plain."
    )


def test_sentry_is_off_unless_a_dsn_is_set_and_never_sends_personal_data(tmp_path):
    report = (
        "import sentry_sdk; client = sentry_sdk.get_client(); "
        "print(client.is_active(), client.options['send_default_pii'], "
        "client.options['max_request_body_size'])"
    )
    off = start(tmp_path, report, **PRODUCTION)
    assert off.stdout.split()[0] == "False", off.stderr
    on = start(tmp_path, report, SENTRY_DSN="https://key@127.0.0.1:9/1", **PRODUCTION)
    assert on.stdout.split() == ["True", "False", "never"], on.stderr


@pytest.mark.django_db(transaction=True)
def test_gunicorn_and_the_app_write_json_lines_naming_the_request(tmp_path):
    """A real gunicorn: its own lines and the app's are JSON on stderr, and a refused agent's
    request is a WARNING naming the id the response carried."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "DATABASE_URL": workers.test_database_url(),
        "CUSTODY_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    stderr = tmp_path / "gunicorn.log"
    with stderr.open("w") as sink:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "-b", f"127.0.0.1:{port}", "-w", "1"]
            + ["config.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        response = None
        deadline = time.monotonic() + 60
        while response is None:
            try:
                response = urllib.request.urlopen(  # noqa: S310 - our own server
                    urllib.request.Request(
                        f"http://127.0.0.1:{port}/api/v1/agents/me",
                        headers={"Authorization": "Bearer not-a-token", "Host": "localhost"},
                    ),
                    timeout=10,
                )
            except urllib.error.HTTPError as refused:
                response = refused
            except OSError:
                assert time.monotonic() < deadline, stderr.read_text()
                time.sleep(0.2)
        assert response.status == 401
        request_id = response.headers["X-Request-ID"]
        deadline = time.monotonic() + 10
        while "auth.rejected" not in stderr.read_text():
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.1)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.strip()]
    assert any(line["logger"] == "gunicorn.error" for line in lines)  # "Booting worker ..."
    [rejected] = [line for line in lines if line.get("event") == "auth.rejected"]
    assert (rejected["level"], rejected["reason"]) == ("WARNING", "malformed_token")
    assert rejected["request_id"] == request_id
