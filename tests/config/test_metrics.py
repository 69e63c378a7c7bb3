"""/metrics through Django: who may scrape, latency by route name, and Custody's own gauges and
counters moving with what happens (grants, requests, decisions, logins, JWKS, the audit chain)."""

from datetime import datetime, timedelta

import pytest
import time_machine
from rest_framework.test import APIClient

from audit.services import checkpoint_publish
from audit.tasks import chain_check_run
from tests.approvals.conftest import decide, submit
from tests.config.metrics_text import samples, value
from tests.factories import AgentFactory, TrustDomainFactory
from tests.workers import free_port

pytestmark = pytest.mark.django_db


def scrape(**extra) -> str:
    response = APIClient().get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def test_it_refuses_a_peer_outside_the_metrics_networks(settings):
    settings.CUSTODY_METRICS_TOKEN = "scraper-secret-0123456789"
    outside = {"REMOTE_ADDR": "203.0.113.7"}
    refused = APIClient().get("/metrics", **outside)
    assert refused.status_code == 403
    assert "CUSTODY_METRICS_TOKEN" in refused.content.decode()
    wrong = APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer nope", **outside)
    assert wrong.status_code == 403
    assert "custody_live_grants" in scrape(
        HTTP_AUTHORIZATION="Bearer scraper-secret-0123456789", **outside
    )


def test_it_serves_a_peer_inside_the_metrics_networks(settings):
    settings.CUSTODY_METRICS_TOKEN = None
    settings.CUSTODY_METRICS_NETWORKS = ["10.0.0.0/8"]
    assert APIClient().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert "custody_live_grants" in scrape(REMOTE_ADDR="10.1.2.3")


def test_it_measures_latency_by_route_name_not_raw_path(agent_api, privileges):
    before = value(
        scrape(),
        "custody_http_request_duration_seconds_count",
        0,
        route="api-request",
        method="GET",
        status="4xx",
    )
    for request_id in (901, 902):
        assert agent_api.get(f"/api/v1/requests/{request_id}").status_code == 404
    text = scrape()
    labels = {"route": "api-request", "method": "GET", "status": "4xx"}
    assert value(text, "custody_http_request_duration_seconds_count", **labels) == before + 2
    assert "/api/v1/requests/901" not in text


def test_the_grant_and_request_gauges_follow_the_database(
    agent_api, privileges, sponsor, django_capture_on_commit_callbacks
):
    text = scrape()
    assert value(text, "custody_live_grants") == 0
    assert value(text, "custody_pending_requests", risk="medium") == 0
    decisions_before = value(text, "custody_decisions_total", 0, channel="api", verdict="approve")

    grant = submit(agent_api, duration=600).json()["grant"]
    pending = submit(agent_api, "payments-api:refund", task_id="task-2", duration=1200).json()
    assert pending["status"] == "pending"
    text = scrape()
    assert value(text, "custody_live_grants") == 1
    assert value(text, "custody_pending_requests", risk="medium") == 1
    assert value(text, "custody_pending_requests", risk="critical") == 0

    with django_capture_on_commit_callbacks(execute=True):  # counted once committed
        assert decide(sponsor, pending["id"]).status_code in (200, 201)
    text = scrape()
    assert value(text, "custody_pending_requests", risk="medium") == 0
    assert value(text, "custody_live_grants") == 2
    assert (
        value(text, "custody_decisions_total", channel="api", verdict="approve")
        == decisions_before + 1
    )

    # Past the first grant's time with no sweep run: counted as lagging, and no longer live.
    # Thirty seconds past its expiry, counted from the grant's own time (not from the test's
    # clock, which a loaded machine moves on by seconds between the submit and here).
    expires_at = datetime.fromisoformat(grant["expires_at"].replace("Z", "+00:00"))
    with time_machine.travel(expires_at + timedelta(seconds=30), tick=False):
        text = scrape()
    assert value(text, "custody_grants_past_expiry") == 1
    assert 29 <= value(text, "custody_expiry_lag_seconds") <= 31
    assert grant["id"]


def _rejections() -> dict:
    return {
        dict(labels)["reason"]: count
        for (name, labels), count in samples(scrape()).items()
        if name == "custody_agent_login_rejections_total"
    }


def test_rejected_logins_are_counted_by_reason(api, agent, signer):
    before = _rejections()
    api.credentials(HTTP_AUTHORIZATION="Bearer not.a.jwt")
    assert api.get("/api/v1/grants").status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id, audience='else')}")
    assert api.get("/api/v1/grants").status_code == 401
    after = _rejections()
    moved = {reason: after[reason] - before.get(reason, 0) for reason in after}
    assert sorted(reason for reason, count in moved.items() if count) == sorted(
        {reason for reason, count in moved.items() if count}
    )
    assert sum(moved.values()) == 2, moved
    assert len([reason for reason, count in moved.items() if count]) == 2, moved


def test_jwks_fetch_failures_are_counted_by_trust_domain(api, signer, sponsor, team):
    domain = TrustDomainFactory(
        name="remote.test", jwks=None, jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json"
    )
    agent = AgentFactory(spiffe_id="spiffe://remote.test/agents/bot", sponsor=sponsor, team=team)
    assert agent.spiffe_id.startswith(f"spiffe://{domain.name}/")
    before = value(scrape(), "custody_jwks_fetch_failures_total", 0, trust_domain="remote.test")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
    assert api.get("/api/v1/grants").status_code == 401
    text = scrape()
    assert value(text, "custody_jwks_fetch_failures_total", trust_domain="remote.test") == (
        before + 1
    )
    assert value(text, "custody_agent_login_rejections_total", reason="jwks_unavailable") >= 1


def test_the_audit_chain_gauges(agent_api, privileges):
    text = scrape()
    assert value(text, "custody_audit_chain_ok") is None  # never walked yet
    assert value(text, "custody_audit_checkpoint_age_seconds") is None
    submit(agent_api)
    check = chain_check_run()
    checkpoint_publish()
    text = scrape()
    assert value(text, "custody_audit_chain_ok") == 1
    assert value(text, "custody_audit_chain_last_verified_sequence") == check.verified > 0
    assert value(text, "custody_audit_head_sequence") >= check.verified
    assert 0 <= value(text, "custody_audit_checkpoint_age_seconds") < 60


def test_the_alert_rules_and_dashboard_name_only_series_custody_exports(agent_api, privileges):
    import json
    import re
    from pathlib import Path

    import yaml

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    rules = yaml.safe_load((deploy / "prometheus" / "custody-alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((deploy / "grafana" / "custody-dashboard.json").read_text())
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {name for expr in expressions for name in re.findall(r"\bcustody_\w+", expr)}

    submit(agent_api)
    chain_check_run()
    checkpoint_publish()
    exported = {name for name, _labels in samples(scrape())}
    # Counters a fresh process has not incremented yet have no sample; their families are known.
    exported |= {
        "custody_agent_login_rejections_total",
        "custody_jwks_fetch_failures_total",
        "custody_decisions_total",
        "custody_celery_tasks_total",
    }
    assert named and named <= exported, named - exported
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"CustodyExpiryLagging", "CustodyAuditChainBroken", "CustodyQueueBacklog"} <= alerts
    assert "CustodyJwksFetchFailing" in alerts
