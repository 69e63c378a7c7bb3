"""The web service as docker-compose.yml runs it (gunicorn with uvicorn workers, config.asgi),
started by the test on the test database, reached the way nginx reaches it.

- The client's address and scheme pass through TRUSTED_PROXIES only: through the trusted proxy
  (127.0.0.2 here) X-Forwarded-Proto: https is believed, so HSTS is sent and there is no
  redirect loop; from any other peer it is not; `auth.rejected` records the proxied client.
- 50 agents long-polling cannot starve the inbox or a Slack callback: both answer while every
  long poll is still waiting, and the poll of the request decided in Slack then wakes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from approvals.models import AccessRequest
from audit.models import AuditEvent
from tests import workers
from tests.approvals.conftest import privileges, submit  # noqa: F401 - a fixture
from tests.approvals.test_slack import SECRET, SLACK_ENV, action_body
from tests.factories import AgentFactory
from tests.fake_slack import FakeSlack

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PROXY = "127.0.0.2"  # the trusted proxy: every 127/8 address is this host's loopback
AGENTS = 50


def compose_web_command(port: int) -> list[str]:
    """docker-compose.yml's web command, bound to a local port."""
    services = yaml.safe_load((workers.ROOT / "docker-compose.yml").read_text())["services"]
    command = [str(argument) for argument in services["web"]["command"]]
    assert command[0] == "gunicorn"
    command = [a for a in command[1:] if not a.startswith(("--bind", "--access-logfile"))]
    return [str(Path(sys.executable).with_name("gunicorn")), *command, f"--bind=127.0.0.1:{port}"]


class WebServer:
    def __init__(self, env: dict):
        self.port = workers.free_port()
        handle, name = tempfile.mkstemp(prefix="custody-web-", suffix=".log")
        self.log_path = Path(name)
        with os.fdopen(handle, "w") as log:
            self.process = subprocess.Popen(
                compose_web_command(self.port),
                cwd=workers.ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for _ in range(600):  # until it answers (or dies)
            if self.process.poll() is not None:
                raise RuntimeError(f"web exited:\n{self.log_path.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                self.get("/healthz-not-a-page", peer=PROXY)
                return
            time.sleep(0.1)
        raise RuntimeError(f"web never answered:\n{self.log_path.read_text()[-4000:]}")

    def request(self, method, path, *, peer="127.0.0.1", headers=None, body=None, timeout=60):
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=timeout, source_address=(peer, 0)
        )
        connection.request(
            method, path, body=body, headers={"Host": "localhost", **(headers or {})}
        )
        response = connection.getresponse()
        content = response.read()
        connection.close()
        return response, content

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def stop(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def fake_slack():
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.fixture
def web(db, fake_slack, tmp_path):
    env = {
        **os.environ,
        **SLACK_ENV,
        "SLACK_API_URL": fake_slack.url,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "DATABASE_URL": workers.test_database_url(),
        "CELERY_BROKER_URL": "filesystem://",  # notifications queue up in tmp_path, unsent
        "CUSTODY_VAR_DIR": str(tmp_path),
        "TRUSTED_PROXIES": PROXY,
        "TRUST_X_FORWARDED_PROTO": "true",
        "SECURE_SSL_REDIRECT": "true",
        "PYTHONUNBUFFERED": "1",
    }
    server = WebServer(env)
    yield server
    server.stop()


VIA_PROXY = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.23"}


def test_the_scheme_is_believed_from_the_trusted_proxy_only(web):
    answer, _ = web.get("/login/", peer=PROXY, headers=VIA_PROXY)
    assert answer.status == 200  # no redirect loop behind the TLS terminator
    assert answer.getheader("Strict-Transport-Security") == "max-age=3600"
    # Anyone else claiming https is redirected to it, and gets no HSTS.
    answer, _ = web.get("/login/", peer="127.0.0.1", headers=VIA_PROXY)
    assert answer.status == 301
    assert answer.getheader("Location") == "https://localhost/login/"
    assert answer.getheader("Strict-Transport-Security") is None


def test_a_rejected_agent_through_the_proxy_is_recorded_with_the_clients_address(web):
    headers = {**VIA_PROXY, "Authorization": "Bearer not-a-jwt"}
    answer, _ = web.get("/api/v1/grants", peer=PROXY, headers=headers)
    assert answer.status == 401
    rejected = AuditEvent.objects.get(verb="auth.rejected")
    assert rejected.data["address"] == "198.51.100.23"
    assert rejected.actor_id == "unauthenticated:198.51.100.23"


def test_a_rejected_agent_from_an_untrusted_peer_is_recorded_with_the_peer(db):
    # In process: over HTTP an untrusted peer is redirected to https before it authenticates.
    client = APIClient(REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="198.51.100.23")
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-jwt")
    assert client.get("/api/v1/grants").status_code == 401
    assert AuditEvent.objects.get(verb="auth.rejected").data["address"] == "203.0.113.9"


def test_a_rejected_agent_behind_a_trusted_proxy_is_recorded_with_the_client(db, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    client = APIClient(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.23")
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-jwt")
    assert client.get("/api/v1/grants").status_code == 401
    assert AuditEvent.objects.get(verb="auth.rejected").data["address"] == "198.51.100.23"


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


@pytest.mark.usefixtures("privileges")
def test_fifty_long_polls_do_not_starve_the_inbox_or_a_slack_callback(
    web, sponsor, team, trust_domain, signer
):
    waiting = []
    for n in range(AGENTS):
        agent = AgentFactory(
            spiffe_id=f"spiffe://example.test/agents/bot-{n}", sponsor=sponsor, team=team
        )
        api = APIClient()
        token = signer.mint(agent.spiffe_id, ttl=600)
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        request_id = submit(api, "payments-api:refund", task_id=f"t-{n}").json()["id"]
        waiting.append((request_id, token))
    assert AccessRequest.objects.filter(status="pending").count() == AGENTS

    sent = threading.Barrier(AGENTS + 1)
    answers: dict[int, dict] = {}

    def long_poll(request_id: int, token: str) -> None:
        connection = http.client.HTTPConnection(
            "127.0.0.1", web.port, timeout=60, source_address=(PROXY, 0)
        )
        headers = {**VIA_PROXY, "Host": "localhost", "Authorization": f"Bearer {token}"}
        connection.request("GET", f"/api/v1/requests/{request_id}?wait=30", headers=headers)
        sent.wait()
        response = connection.getresponse()
        answers[request_id] = json.loads(response.read())
        connection.close()

    threads = [threading.Thread(target=long_poll, args=item) for item in waiting]
    for thread in threads:
        thread.start()
    sent.wait()  # every agent's long poll is on the wire

    cookie = {**VIA_PROXY, "Cookie": session_cookie(sponsor)}
    inbox, page = web.get("/inbox/", peer=PROXY, headers=cookie)
    assert inbox.status == 200, page[:500]
    assert b"payments-api:refund" in page
    assert answers == {}  # the inbox answered while all 50 still wait

    decided = waiting[0][0]
    body = action_body("USPONSOR1", "custody_approve", str(decided))
    stamp = str(int(time.time()))
    signature = (
        "v0=" + hmac.new(SECRET.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256).hexdigest()
    )
    callback, content = web.request(
        "POST",
        "/slack/interactions",
        peer=PROXY,
        body=body,
        headers={
            **VIA_PROXY,
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
        },
    )
    assert callback.status == 200, content
    assert set(answers) <= {decided}  # the callback answered while the other 49 still wait
    assert AccessRequest.objects.get(pk=decided).status == "approved"

    # The decided request's poll wakes; end the others by cancelling them, as agents may.
    threads[0].join(timeout=60)
    assert answers[decided]["status"] == "approved"
    for request_id, token in waiting[1:]:
        agent_api = APIClient()
        agent_api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        assert agent_api.post(f"/api/v1/requests/{request_id}/cancel").status_code == 200
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == AGENTS
    assert {answer["status"] for rid, answer in answers.items() if rid != decided} == {"cancelled"}
