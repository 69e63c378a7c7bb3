"""Keys that vouch for agents: ES384 SVIDs (SPIRE on P-384) are accepted; a trust domain's
jwks_url is https outside DEBUG (checked in admin and again at fetch), its certificate is
checked, and a redirect is refused, never followed."""

import logging

import pytest

from agents import jwks
from agents.models import Agent, TrustDomain
from audit.models import AuditEvent
from tests.factories import AgentFactory, TrustDomainFactory
from tests.identity import SigningIdentity

ME = "/api/v1/agents/me"
ISSUER = "https://token.ci.example"
SUBJECT = "repo:acme/payments:ref:main"
ADMIN_ADD = "/admin/agents/trustdomain/add/"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_cached_keys():
    jwks._process_cache.clear()
    yield
    jwks._process_cache.clear()


def get_me(api, token):
    return api.get(ME, HTTP_AUTHORIZATION=f"Bearer {token}")


def assert_rejected(response, reason):
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] == reason


@pytest.fixture
def ci_agent(db, sponsor, team):
    """An OIDC-vouched agent; each test registers its issuer's trust domain."""
    return AgentFactory(spiffe_id="spiffe://example.test/agents/ci-bot", sponsor=sponsor, team=team)


def register_issuer(agent, jwks_url: str) -> TrustDomain:
    # Saved as the database would hold it (a row written before this rule, or under DEBUG):
    # the fetch checks the URL again whatever the row says.
    domain = TrustDomainFactory(
        name="ci-oidc", kind="oidc", issuer=ISSUER, jwks=None, jwks_url=jwks_url
    )
    Agent.objects.filter(pk=agent.pk).update(oidc_trust_domain=domain, oidc_subject=SUBJECT)
    return domain


# --- ES384 ------------------------------------------------------------------------------


def test_an_es384_svid_from_a_p384_spire_key_is_accepted(api, trust_domain, agent):
    p384 = SigningIdentity("ES384")
    trust_domain.jwks = {"keys": [*trust_domain.jwks["keys"], p384.jwk]}
    trust_domain.save(update_fields=["jwks"])
    response = get_me(api, p384.mint(agent.spiffe_id))
    assert response.status_code == 200, response.content
    assert response.json()["spiffe_id"] == agent.spiffe_id


def test_an_es384_token_fetched_by_url_over_https_is_accepted(api, ci_agent, jwks_server):
    p384 = SigningIdentity("ES384")
    jwks_server["document"] = p384.jwks
    register_issuer(ci_agent, jwks_server["url"])
    response = get_me(api, p384.mint(SUBJECT, iss=ISSUER))
    assert response.status_code == 200, response.content
    assert jwks_server["hits"] == 1


def test_es384_with_a_p256_key_is_refused(api, trust_domain, agent, signer):
    # The domain's P-256 key, its JWK without "alg": the token claims ES384 over it.
    trust_domain.jwks = {"keys": [{k: v for k, v in signer.jwk.items() if k != "alg"}]}
    trust_domain.save(update_fields=["jwks"])
    p384 = SigningIdentity("ES384")
    forged = p384.mint(agent.spiffe_id, headers={"kid": signer.kid})
    assert_rejected(get_me(api, forged), "bad_signature")


# --- https only, redirects refused --------------------------------------------------------


def test_a_plain_http_jwks_url_is_not_fetched_outside_debug(
    api, ci_agent, plain_http_jwks_server, caplog
):
    issuer_key = SigningIdentity("RS256")
    plain_http_jwks_server["document"] = issuer_key.jwks
    register_issuer(ci_agent, plain_http_jwks_server["url"])
    with caplog.at_level(logging.WARNING, logger="agents.jwks"):
        assert_rejected(get_me(api, issuer_key.mint(SUBJECT, iss=ISSUER)), "jwks_unavailable")
    assert plain_http_jwks_server["hits"] == 0  # refused before any connection
    assert "must start with https://" in caplog.text
    assert AuditEvent.objects.filter(verb="auth.rejected", data__reason="jwks_unavailable")


def test_with_debug_on_a_local_http_issuer_works(api, ci_agent, plain_http_jwks_server, settings):
    settings.DEBUG = True
    issuer_key = SigningIdentity("RS256")
    plain_http_jwks_server["document"] = issuer_key.jwks
    register_issuer(ci_agent, plain_http_jwks_server["url"])
    assert get_me(api, issuer_key.mint(SUBJECT, iss=ISSUER)).status_code == 200
    assert plain_http_jwks_server["hits"] == 1


def test_a_redirect_is_refused_not_followed(api, ci_agent, jwks_server, caplog):
    issuer_key = SigningIdentity("RS256")
    jwks_server["document"] = issuer_key.jwks
    register_issuer(ci_agent, jwks_server["moved_url"])
    with caplog.at_level(logging.WARNING, logger="agents.jwks"):
        assert_rejected(get_me(api, issuer_key.mint(SUBJECT, iss=ISSUER)), "jwks_unavailable")
    assert jwks_server["redirects"] == 1
    assert jwks_server["hits"] == 0  # the redirect's target was never asked
    assert "redirected (HTTP 302" in caplog.text


def test_a_certificate_custody_does_not_trust_is_refused(api, ci_agent, jwks_server, settings):
    settings.CUSTODY_JWKS_CA_FILE = ""  # the system's trust store: the self-signed cert fails
    issuer_key = SigningIdentity("RS256")
    jwks_server["document"] = issuer_key.jwks
    register_issuer(ci_agent, jwks_server["url"])
    assert_rejected(get_me(api, issuer_key.mint(SUBJECT, iss=ISSUER)), "jwks_unavailable")
    assert jwks_server["hits"] == 0


# --- admin ---------------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def admin_form(jwks_url: str) -> dict:
    return {
        "name": "ci-oidc",
        "kind": "oidc",
        "issuer": ISSUER,
        "audience": "",
        "jwks": "",
        "jwks_url": jwks_url,
        "enabled": "on",
    }


def test_admin_refuses_an_http_jwks_url_outside_debug(admin_client):
    response = admin_client.post(ADMIN_ADD, admin_form("http://issuer.example/jwks.json"))
    assert response.status_code == 200  # the form again, with the error
    assert "must start with https://" in response.content.decode()
    assert not TrustDomain.objects.filter(name="ci-oidc").exists()
    assert not AuditEvent.objects.filter(verb="trust_domain.registered").exists()


def test_admin_accepts_an_https_jwks_url_and_an_http_one_under_debug(admin_client, settings):
    response = admin_client.post(ADMIN_ADD, admin_form("https://issuer.example/jwks.json"))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert TrustDomain.objects.get(name="ci-oidc").jwks_url == "https://issuer.example/jwks.json"
    settings.DEBUG = True
    local = admin_form("http://127.0.0.1:8080/jwks.json") | {"name": "local", "issuer": "x"}
    response = admin_client.post(ADMIN_ADD, local)
    assert response.status_code == 302, response.content.decode()[:2000]
