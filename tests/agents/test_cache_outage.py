"""The shared cache (Redis) is an optimisation: with it down, agents still authenticate, a
refused login is still a 401 and still audited (within its budget), never a 500."""

import pytest
import redis
from django.core.cache import cache
from django.test import override_settings

from agents import jwks
from audit import services as audit_services
from audit.models import AuditEvent
from tests.identity import SigningIdentity
from tests.workers import free_port

ME = "/api/v1/agents/me"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def cache_down():
    """CACHE_URL on a port where nothing listens, as when Redis is stopped."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    backend = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": dead}
    with override_settings(CACHES={"default": backend}):
        with pytest.raises(redis.exceptions.ConnectionError):
            cache.get("anything")
        jwks._process_cache.clear()
        audit_services._process_budget.clear()
        yield
        jwks._process_cache.clear()
        audit_services._process_budget.clear()


def get_me(api, token):
    return api.get(ME, HTTP_AUTHORIZATION=f"Bearer {token}")


def test_an_agent_whose_keys_are_fetched_by_url_authenticates(api, oidc_agent, jwks_server):
    for _ in range(3):
        token = oidc_agent.mint("repo:acme/payments:ref:main", iss="https://token.ci.example")
        response = get_me(api, token)
        assert response.status_code == 200, response.content
        assert response.json()["spiffe_id"] == "spiffe://example.test/agents/ci-bot"
    assert jwks_server["hits"] == 1  # kept in the process meanwhile, not fetched per request


def test_a_refused_login_is_a_401_and_is_audited(api, agent):
    token = SigningIdentity("ES256").mint(agent.spiffe_id)  # a key the domain never registered
    response = get_me(api, token)
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] == "unknown_key"
    event = AuditEvent.objects.get(verb="auth.rejected")
    assert event.data["reason"] == "unknown_key"


def test_refused_logins_stay_within_their_audit_budget(api, agent, settings):
    settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE = 3
    for _ in range(6):
        response = get_me(api, "garbage-token")
        assert response.status_code == 401, response.content
        assert response.json()["error"]["code"] == "malformed_token"
    assert AuditEvent.objects.filter(verb="auth.rejected").count() == 3
