"""Logs an operator can follow: every line of a request, and of the tasks it enqueued, names the
same request id and who it was about; refusals that matter to security are WARNINGs."""

import json
import logging
import time

import pytest
from django.conf import settings
from django.test import Client

from approvals.models import Grant
from core import log_context
from tests.approvals.conftest import submit
from tests.approvals.test_slack import SLACK_ENV, action_body, signed
from tests.factories import PolicyFactory
from tests.workers import Worker

pytestmark = pytest.mark.django_db


def context(record) -> dict:
    return log_context.fields_of(record)


def warnings_about(caplog, event: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if getattr(record, "event", None) == event and record.levelno == logging.WARNING
    ]


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # any line that looks like JSON must parse
    return lines


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# --- The request id ---------------------------------------------------------------------------


def test_it_gives_each_request_an_id_and_names_the_agent(agent_api, agent, privileges, caplog):
    caplog.set_level(logging.INFO)
    first = submit(agent_api, task_id="one")
    second = submit(agent_api, task_id="two")
    assert first["X-Request-ID"] != second["X-Request-ID"]
    issued = [record for record in caplog.records if getattr(record, "event", "") == "grant.issued"]
    assert [context(record)["request_id"] for record in issued] == [
        first["X-Request-ID"],
        second["X-Request-ID"],
    ]
    grant = Grant.objects.get(pk=first.json()["grant"]["id"])
    assert context(issued[0]) | {} == {
        "request_id": first["X-Request-ID"],
        "client_ip": "127.0.0.1",
        "agent": agent.spiffe_id,
        "access_request_id": grant.access_request_id,
        "grant_id": grant.pk,
        "task_id": "one",
    }


def test_it_keeps_a_request_id_only_from_a_trusted_proxy(agent_api, privileges, settings, caplog):
    sent = agent_api.get("/api/v1/agents/me", HTTP_X_REQUEST_ID="from-the-client")
    assert sent.status_code == 200
    assert sent["X-Request-ID"] != "from-the-client"

    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    kept = agent_api.get("/api/v1/agents/me", HTTP_X_REQUEST_ID="edge-7f3a")
    assert kept["X-Request-ID"] == "edge-7f3a"
    # Even from the proxy, an id that could break a log line is replaced.
    forged = agent_api.get("/api/v1/agents/me", HTTP_X_REQUEST_ID='x" level="ERROR')
    assert forged["X-Request-ID"] != 'x" level="ERROR'
    assert log_context.valid_request_id(forged["X-Request-ID"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_worker_logs_the_request_id_of_the_request_that_enqueued_its_task(
    agent_api, agent, privileges, caplog
):
    """A grant's expiry task is enqueued by the HTTP request that issued it; the real worker
    that runs it writes JSON lines naming the same request id, agent and grant. No beat: a
    sweep would race the task for the grant (and win on a loaded machine), under its own id."""
    caplog.set_level(logging.INFO)
    worker = Worker(
        broker_url=settings.CELERY_BROKER_URL,
        queues="expiry",
        beat=False,
        env={"CUSTODY_LOG_FORMAT": "json"},
    )
    try:
        response = submit(agent_api, duration=2, task_id="logged")
        request_id = response["X-Request-ID"]
        grant_id = response.json()["grant"]["id"]

        def ended_in_the_worker():
            return any(
                line.get("event") == "grant.ended" and line.get("grant_id") == grant_id
                for line in json_lines(worker.output())
            )

        assert wait_until(ended_in_the_worker, 15), worker.output()[-3000:]
    finally:
        worker.stop()

    web = [context(record) for record in caplog.records if getattr(record, "custody", None)]
    assert any(fields.get("request_id") == request_id for fields in web)
    ended = next(
        line
        for line in json_lines(worker.output())
        if line.get("event") == "grant.ended" and line.get("grant_id") == grant_id
    )
    assert ended["request_id"] == request_id
    assert ended["agent"] == agent.spiffe_id
    assert ended["task_id"] == "logged"
    assert ended["celery_task"] == "approvals.tasks.expire_grant"
    assert ended["level"] == "INFO"
    assert ended["logger"] == "approvals.services.grants"
    assert "client_ip" not in ended  # the worker's lines say which request, not from where


# --- Refusals at WARNING ----------------------------------------------------------------------


def test_a_policy_deny_is_a_warning(agent_api, agent, privileges, caplog):
    PolicyFactory(
        name="freeze",
        text='@id("freeze") forbid (principal, action, resource);',
    )
    response = submit(agent_api, task_id="frozen")
    assert response.json()["status"] == "denied"
    [warning] = warnings_about(caplog, "request.denied")
    assert warning.name == "custody.security"
    assert context(warning)["request_id"] == response["X-Request-ID"]
    assert context(warning)["agent"] == agent.spiffe_id
    assert context(warning)["access_request_id"] == response.json()["id"]


def test_refused_tool_calls_refreshes_and_introspections_are_warnings(
    agent_api, agent, privileges, resource_server_api, caplog
):
    body = submit(agent_api).json()
    grant_id = body["grant"]["id"]
    assert agent_api.post(f"/api/v1/grants/{grant_id}/complete").status_code == 200

    tool = agent_api.post(
        f"/api/v1/grants/{grant_id}/tool-calls",
        {"tool": "sql.select", "target": "ledger", "outcome": "success"},
        format="json",
    )
    assert tool.status_code == 409
    assert agent_api.post(f"/api/v1/grants/{grant_id}/token").status_code == 409
    introspected = resource_server_api.post(
        "/api/v1/introspect", {"token": body["grant"]["access_token"]}, format="json"
    )
    assert introspected.json() == {"active": False}
    assert agent_api.post("/api/v1/introspect", {"token": "x"}, format="json").status_code == 403

    [refused_tool] = warnings_about(caplog, "tool.refused")
    assert refused_tool.grant_id == grant_id
    assert context(refused_tool)["request_id"] == tool["X-Request-ID"]
    assert warnings_about(caplog, "token.refused")[0].why == "grant_not_active"
    assert warnings_about(caplog, "introspection.refused")[0].why == "grant_ended"
    assert warnings_about(caplog, "introspection.forbidden")[0].why == "not_a_resource_server"


def test_a_forged_slack_signature_is_a_warning(settings, agent_api, privileges, caplog):
    for name, value in SLACK_ENV.items():
        setattr(settings, name, value)
    request_id = submit(agent_api, "payments-api:refund").json()["id"]
    body = action_body("USPONSOR1", "custody_approve", str(request_id))
    response = Client().post(
        "/slack/interactions",
        body,
        content_type="application/x-www-form-urlencoded",
        **signed(body, secret="not-the-secret"),
    )
    assert response.status_code == 401
    [warning] = warnings_about(caplog, "slack.rejected")
    assert warning.why == "bad_signature"
    assert context(warning)["request_id"] == response["X-Request-ID"]


def test_a_csrf_refusal_is_a_warning_with_the_person_and_request_id(sponsor, caplog):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(sponsor)
    response = browser.post("/inbox/", {})
    assert response.status_code == 403
    [warning] = [
        record
        for record in caplog.records
        if record.name == "django.security.csrf" and record.levelno == logging.WARNING
    ]
    assert context(warning)["request_id"] == response["X-Request-ID"]
    assert context(warning)["person"] == sponsor.username


def test_a_permission_refusal_is_a_warning(agent_api, caplog):
    # Only registered resource servers may introspect: any other agent is refused, 403.
    response = agent_api.post("/api/v1/introspect", {"token": "x"}, format="json")
    assert response.status_code == 403
    [refused] = [
        record
        for record in caplog.records
        if record.name == "django.request" and record.levelno == logging.WARNING
    ]
    assert refused.getMessage() == "Forbidden: /api/v1/introspect"
    assert context(refused)["request_id"] == response["X-Request-ID"]
