"""Refused agent logins and unreachable JWKS endpoints are WARNING lines an operator sees."""

import logging

import pytest

from agents.models import TrustDomain
from core import log_context
from tests.identity import SigningIdentity
from tests.workers import free_port

pytestmark = pytest.mark.django_db

ME = "/api/v1/agents/me"


def warnings_about(caplog, event: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if getattr(record, "event", None) == event and record.levelno == logging.WARNING
    ]


def test_a_rejected_agent_login_is_a_warning(api, agent, caplog):
    token = SigningIdentity("ES256").mint(agent.spiffe_id)
    response = api.get(ME, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 401
    [warning] = warnings_about(caplog, "auth.rejected")
    assert warning.name == "custody.security"
    assert warning.reason == "unknown_key"
    assert log_context.fields_of(warning)["request_id"] == response["X-Request-ID"]
    # The token itself is never logged.
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


def test_a_failed_jwks_fetch_is_a_warning_naming_the_trust_domain(api, oidc_agent, caplog):
    nobody_listens = f"http://127.0.0.1:{free_port()}/jwks.json"
    TrustDomain.objects.filter(name="ci-oidc").update(jwks_url=nobody_listens)
    token = oidc_agent.mint("repo:acme/payments:ref:main", iss="https://token.ci.example")
    response = api.get(ME, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 401
    [failed] = warnings_about(caplog, "jwks.fetch_failed")
    assert failed.trust_domain == "ci-oidc"
    assert nobody_listens in failed.getMessage()
    assert log_context.fields_of(failed)["request_id"] == response["X-Request-ID"]
