"""The `custody` command as a shell user runs it (the console script, in a subprocess) against
the live server: every command, `--json`, and each documented exit code."""

import json

import jwt
import pytest
from django.conf import settings as django_settings

from approvals.models import Eligibility, Grant
from tests.client.conftest import Background, approve_when_pending, custody_cli
from tests.factories import AgentFactory, PolicyFactory
from tests.workers import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def cli(live_server, agent, signer, privileges, tmp_path):
    """`cli(*args, check=exit code)` as the invoice bot, its SVID in a file as SPIRE writes it."""
    svid_file = tmp_path / "svid.jwt"
    svid_file.write_text(signer.mint(agent.spiffe_id, ttl=900))

    def run(*args, check=0, **kwargs):
        return custody_cli(*args, url=live_server.url, svid_file=svid_file, check=check, **kwargs)

    return run


def ask(cli, privilege="payments-db:read", *more, check=0):
    return cli(
        "--json",
        "request",
        privilege,
        "--task",
        "t-cli",
        "--intent",
        "Reconcile invoices",
        "--duration",
        "10m",
        *more,
        check=check,
    )


def test_whoami(cli, agent):
    assert agent.spiffe_id in cli("whoami").stdout
    assert json.loads(cli("--json", "whoami").stdout)["sponsor"] == "sponsor"


def test_request_grants_token_explain_complete(cli):
    granted = json.loads(ask(cli, "payments-db:read", "--wait").stdout)
    grant_id = granted["grant_id"]
    assert jwt.decode(granted["access_token"], options={"verify_signature": False})["grant_id"] == (
        grant_id
    )
    assert f"#{grant_id}" in cli("grants", "--active").stdout
    assert [g["id"] for g in json.loads(cli("--json", "grants").stdout)["results"]] == [grant_id]
    token = cli("token", str(grant_id)).stdout.strip()
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == "payments-db:read"
    explained = cli("explain", "--grant", str(grant_id)).stdout
    assert "policy: auto_approve by low-risk-short-read-automatic" in explained
    assert "Low-risk, read-only access" in explained
    assert f"grant #{grant_id} ended (completed)" in cli("complete", str(grant_id)).stdout
    assert Grant.objects.get(pk=grant_id).revoke_reason == "completed"
    # Ended: completing again or asking for a token exits 6 with Custody's sentence.
    again = cli("complete", str(grant_id), check=6)
    assert "has already ended" in again.stderr and "[grant_not_active]" in again.stderr
    cli("token", str(grant_id), check=6)


def test_request_wait_blocks_until_people_approve(cli, sponsor):
    asking = Background(lambda: ask(cli, "payments-api:refund", "--wait"))
    approve_when_pending(sponsor, privilege="payments-api:refund")
    assert json.loads(asking.result().stdout)["privilege"] == "payments-api:refund"


def test_pending_exits_5_and_explain_and_cancel_show_it(cli):
    pending = ask(cli, "payments-api:refund", check=5)  # no --wait
    request_id = json.loads(pending.stdout)["error"]["request_id"]
    explained = cli("explain", str(request_id)).stdout
    assert f"request #{request_id}: payments-api:refund" in explained and "0 of 1" in explained
    timed_out = ask(cli, "payments-api:refund", "--wait", "--timeout", "1", check=5)
    assert json.loads(timed_out.stdout)["error"]["code"] == "pending"
    assert "cancelled" in cli("cancel", str(request_id)).stdout


def test_denied_exits_3_with_the_policys_reason(cli):
    PolicyFactory(
        name="quarter-close",
        text='@id("freeze")\n@reason("Payments are frozen for the quarter close.")\n'
        'forbid (principal, action, resource) when { resource.resource == "payments-db" };',
    )
    denied = cli("request", "payments-db:read", "--task", "t", "--intent", "x", check=3)
    assert "Payments are frozen for the quarter close." in denied.stderr
    as_json = json.loads(ask(cli, check=3).stdout)["error"]
    assert as_json["code"] == "denied" and as_json["policies"] == ["freeze"]


@pytest.mark.eligibility
def test_not_eligible_exits_4(cli, agent, privileges):
    Eligibility.objects.create(agent=agent, privilege=privileges["read"], granted_by="test")
    refused = cli("request", "payments-db:write", "--task", "t", "--intent", "x", check=4)
    assert "not eligible for payments-db:write" in refused.stderr


def test_expired_exits_6(cli, privileges):
    privileges["refund"].decision_deadline_seconds = 1
    privileges["refund"].save()
    ask(cli, "payments-api:refund", "--wait", check=6)


def test_rate_limited_exits_7(cli, settings):
    settings.CUSTODY_MAX_PENDING_PER_AGENT = 1
    ask(cli, "payments-api:refund", check=5)
    limited = json.loads(ask(cli, "payments-api:refund", check=7).stdout)["error"]
    assert limited["code"] == "too_many_pending_requests" and limited["retry_after"] > 30


def test_usage_not_found_unauthenticated_unreachable(cli, live_server, tmp_path):
    cli("explain", check=2)  # neither a request nor --grant
    cli("request", "payments-db:read", "--task", "t", check=2)  # no --intent
    assert "[not_found]" in cli("token", "987654", check=9).stderr
    stranger = tmp_path / "stranger.jwt"
    stranger.write_text("not-a-jwt")
    custody_cli("whoami", url=live_server.url, svid_file=stranger, check=8)
    no_svid = custody_cli("whoami", url=live_server.url, check=8)
    assert "No SVID" in no_svid.stderr
    bad = cli("request", "payments-db:read", "--task", "has space", "--intent", "x", check=1)
    assert "task_id" in bad.stderr
    custody_cli(
        "whoami", url=f"http://127.0.0.1:{free_port()}", svid_file=tmp_path / "x", check=8
    )  # the file is missing: no SVID before any connection
    (tmp_path / "x").write_text("token")
    assert "could not be reached" in (
        custody_cli(
            "whoami", url=f"http://127.0.0.1:{free_port()}", svid_file=tmp_path / "x", check=10
        ).stderr
    )


def test_dev_mode_needs_no_django_project(live_server, settings, privileges, tmp_path):
    settings.DEBUG = True
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev.pem"
    bot = "spiffe://dev.custody.internal/agents/dev-bot"
    AgentFactory(spiffe_id=bot, name="Dev bot")
    shown = custody_cli("--dev", bot, "whoami", url=live_server.url, check=0).stdout
    assert bot in shown and "Dev bot" in shown
    granted = custody_cli(
        "--json",
        "request",
        "payments-db:read",
        "--task",
        "t-dev",
        "--intent",
        "Try it",
        url=live_server.url,
        env={"CUSTODY_DEV_AGENT": bot},
        check=0,
    )
    assert json.loads(granted.stdout)["privilege"] == "payments-db:read"


def test_dev_mode_is_refused_with_debug_off(live_server, privileges):
    refused = custody_cli(
        "--dev", "spiffe://dev.custody.internal/agents/x", "whoami", url=live_server.url, check=8
    )
    assert "DEBUG off" in refused.stderr and "[dev_only]" in refused.stderr
    assert django_settings.DEBUG is False


def test_the_example_agent_runs_to_completion(live_server, agent, signer, privileges, tmp_path):
    """examples/agent.py, as documented: its SVID in a file, Custody's URL in the environment."""
    import os
    import subprocess
    import sys

    from tests.client.conftest import ROOT

    svid_file = tmp_path / "svid.jwt"
    svid_file.write_text(signer.mint(agent.spiffe_id))
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "agent.py")],
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT / "client"),
            "CUSTODY_URL": live_server.url,
            "CUSTODY_SVID_FILE": str(svid_file),
        },
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"I am {agent.spiffe_id}" in done.stdout
    grant = Grant.objects.get(task_id="reconcile-2026-11")
    assert grant.revoke_reason == "completed"
    from audit.models import AuditEvent

    called = AuditEvent.objects.get(grant_id=grant.pk, verb="tool.called")
    assert called.data["target"] == "payments-db/invoices/2026-11"
