import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization

from agents.services import agent_retire, agent_suspend
from audit.models import AuditEvent
from audit.services import Actor
from tests.factories import AgentFactory
from tests.identity import SigningIdentity

ME = "/api/v1/agents/me"
pytestmark = pytest.mark.django_db


def get_me(api, token):
    return api.get(ME, HTTP_AUTHORIZATION=f"Bearer {token}")


def assert_rejected(response, reason):
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] == reason
    assert response["WWW-Authenticate"].startswith("Bearer")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_it_authenticates_a_valid_svid(api, agent, signer):
    response = get_me(api, signer.mint(agent.spiffe_id))
    assert response.status_code == 200
    body = response.json()
    assert body["spiffe_id"] == agent.spiffe_id
    assert body["sponsor"] == "sponsor"
    assert body["team"] == "payments-platform"
    assert body["status"] == "active"
    agent.refresh_from_db()
    assert agent.last_seen_at is not None


@pytest.mark.parametrize("alg", ["RS256", "EdDSA"])
def test_it_accepts_the_other_allowed_algorithms(api, agent, trust_domain, alg):
    other = SigningIdentity(alg)
    trust_domain.jwks = {"keys": [other.jwk]}
    trust_domain.save()
    assert get_me(api, other.mint(agent.spiffe_id)).status_code == 200


def test_it_needs_a_token(api, agent):
    response = api.get(ME)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_it_rejects_an_expired_token(api, agent, signer):
    token = signer.mint(agent.spiffe_id, iat=int(time.time()) - 600, exp=int(time.time()) - 61)
    assert_rejected(get_me(api, token), "token_expired")


def test_it_allows_sixty_seconds_of_clock_skew(api, agent, signer):
    token = signer.mint(agent.spiffe_id, exp=int(time.time()) - 30, nbf=int(time.time()) + 30)
    assert get_me(api, token).status_code == 200


def test_it_rejects_a_token_not_yet_valid(api, agent, signer):
    assert_rejected(
        get_me(api, signer.mint(agent.spiffe_id, nbf=int(time.time()) + 120)), "token_not_yet_valid"
    )
    assert_rejected(
        get_me(api, signer.mint(agent.spiffe_id, iat=int(time.time()) + 120)), "token_not_yet_valid"
    )


def test_it_requires_exp(api, agent, signer):
    assert_rejected(get_me(api, signer.mint(agent.spiffe_id, exp=None)), "missing_claim")


def test_it_rejects_an_unregistered_trust_domain(api, agent, signer):
    assert_rejected(get_me(api, signer.mint("spiffe://elsewhere.test/agents/x")), "unknown_issuer")


def test_it_rejects_a_token_signed_by_an_unregistered_key(api, agent):
    stranger = SigningIdentity("ES256")
    assert_rejected(get_me(api, stranger.mint(agent.spiffe_id)), "unknown_key")


def test_it_rejects_a_forged_signature_under_a_registered_kid(api, agent, signer):
    forger = SigningIdentity("ES256")
    token = forger.mint(agent.spiffe_id, headers={"kid": signer.kid})
    assert_rejected(get_me(api, token), "bad_signature")


def test_it_rejects_a_tampered_payload(api, agent, signer):
    header, _, signature = signer.mint(agent.spiffe_id).split(".")
    other = AgentFactory(spiffe_id="spiffe://example.test/agents/other")
    payload = b64(
        json.dumps(
            {"sub": other.spiffe_id, "aud": ["custody"], "exp": int(time.time()) + 60}
        ).encode()
    )
    assert_rejected(get_me(api, f"{header}.{payload}.{signature}"), "bad_signature")


def test_it_rejects_alg_none(api, agent, signer):
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": signer.kid}).encode())
    payload = b64(
        json.dumps(
            {"sub": agent.spiffe_id, "aud": ["custody"], "exp": int(time.time()) + 60}
        ).encode()
    )
    assert_rejected(get_me(api, f"{header}.{payload}."), "unsupported_algorithm")


def test_it_rejects_hs256_keyed_with_the_public_key(api, agent, signer):
    public_pem = signer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signer.kid}).encode())
    payload = b64(
        json.dumps(
            {"sub": agent.spiffe_id, "aud": ["custody"], "exp": int(time.time()) + 60}
        ).encode()
    )
    signature = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    assert_rejected(get_me(api, f"{header}.{payload}.{signature}"), "unsupported_algorithm")


def test_it_rejects_the_wrong_audience(api, agent, signer):
    assert_rejected(
        get_me(api, signer.mint(agent.spiffe_id, audience="someone-else")), "wrong_audience"
    )


def test_it_rejects_an_unknown_agent(api, trust_domain, signer):
    assert_rejected(get_me(api, signer.mint("spiffe://example.test/agents/ghost")), "unknown_agent")


def test_it_rejects_a_suspended_agent(api, agent, signer):
    agent_suspend(agent=agent, actor=Actor.system())
    assert_rejected(get_me(api, signer.mint(agent.spiffe_id)), "agent_suspended")


def test_it_rejects_a_retired_agent(api, agent, signer):
    agent_retire(agent=agent, actor=Actor.system())
    assert_rejected(get_me(api, signer.mint(agent.spiffe_id)), "agent_retired")


def test_it_rejects_a_custody_access_token_as_a_login(api, agent, signer, settings):
    at = signer.mint(agent.spiffe_id, headers={"typ": "at+jwt"})
    assert_rejected(get_me(api, at), "wrong_token_type")
    assert_rejected(
        get_me(api, signer.mint(agent.spiffe_id, iss=settings.CUSTODY_ISSUER)), "wrong_token_type"
    )


def test_it_ignores_jku_and_x5u_headers(api, agent):
    attacker = SigningIdentity("ES256")
    token = attacker.mint(
        agent.spiffe_id,
        headers={"jku": "http://127.0.0.1:9/jwks.json", "x5u": "http://127.0.0.1:9/cert.pem"},
    )
    assert_rejected(get_me(api, token), "unknown_key")


def test_it_treats_a_path_traversal_kid_as_an_unknown_key(api, agent, signer):
    token = signer.mint(agent.spiffe_id, headers={"kid": "../../../../etc/passwd"})
    assert_rejected(get_me(api, token), "unknown_key")


def test_it_rejects_garbage(api, agent):
    assert_rejected(get_me(api, "not-a-jwt"), "malformed_token")
    assert_rejected(get_me(api, "a.b.c"), "malformed_token")


def test_it_audits_a_rejection_without_the_token(api, agent):
    token = SigningIdentity("ES256").mint(agent.spiffe_id)
    get_me(api, token)
    event = AuditEvent.objects.get(verb="auth.rejected")
    assert event.data["reason"] == "unknown_key"
    assert event.data["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()[:16]
    assert token not in json.dumps(event.data)
    assert token.split(".")[2] not in json.dumps(event.data)


def test_it_rate_limits_audited_rejections(api, agent, settings):
    settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE = 3
    for _ in range(6):
        assert_rejected(get_me(api, "garbage-token"), "malformed_token")
    assert AuditEvent.objects.filter(verb="auth.rejected").count() == 3


# --- OIDC issuers, with their JWKS fetched over HTTP and cached --------------------------------


def test_it_authenticates_an_oidc_token_with_a_fetched_and_cached_jwks(
    api, oidc_agent, jwks_server
):
    for _ in range(3):
        token = oidc_agent.mint("repo:acme/payments:ref:main", iss="https://token.ci.example")
        response = get_me(api, token)
        assert response.status_code == 200, response.content
        assert response.json()["spiffe_id"] == "spiffe://example.test/agents/ci-bot"
    assert jwks_server["hits"] == 1


def test_it_compares_the_oidc_issuer_exactly(api, oidc_agent):
    for lookalike in [
        "https://token.ci.example.evil",
        "https://token.ci.exampl",
        "https://TOKEN.ci.example",
    ]:
        token = oidc_agent.mint("repo:acme/payments:ref:main", iss=lookalike)
        assert_rejected(get_me(api, token), "unknown_issuer")


def test_it_refetches_the_jwks_once_when_the_issuer_rotates(api, oidc_agent, jwks_server):
    token = oidc_agent.mint("repo:acme/payments:ref:main", iss="https://token.ci.example")
    assert get_me(api, token).status_code == 200
    rotated = SigningIdentity("RS256")
    jwks_server["document"] = {"keys": [oidc_agent.jwk, rotated.jwk]}
    token = rotated.mint("repo:acme/payments:ref:main", iss="https://token.ci.example")
    assert get_me(api, token).status_code == 200
    assert jwks_server["hits"] == 2
