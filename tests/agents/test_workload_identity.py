"""Login SVIDs have a bounded life, and a delegation actor token is never a login."""

import time

import pytest

from tests.factories import TrustDomainFactory

ME = "/api/v1/agents/me"
pytestmark = pytest.mark.django_db


def get_me(api, token):
    return api.get(ME, HTTP_AUTHORIZATION=f"Bearer {token}")


def refusal(response):
    assert response.status_code == 401, response.content
    return response.json()["error"]


def test_it_refuses_a_login_svid_living_longer_than_the_maximum(api, agent, signer, settings):
    assert get_me(api, signer.mint(agent.spiffe_id, ttl=3600)).status_code == 200
    error = refusal(get_me(api, signer.mint(agent.spiffe_id, ttl=3601)))
    assert error["code"] == "token_lifetime_too_long"
    assert "lives 3601 s" in error["message"]
    assert "at most 3600 s for a login token" in error["message"]
    # exp - iat counts, however recently the token claims to have been issued.
    now = int(time.time())
    error = refusal(get_me(api, signer.mint(agent.spiffe_id, iat=now - 3000, exp=now + 700)))
    assert error["code"] == "token_lifetime_too_long"
    settings.CUSTODY_LOGIN_TOKEN_MAX_SECONDS = 600
    assert refusal(get_me(api, signer.mint(agent.spiffe_id, ttl=601)))["code"] == (
        "token_lifetime_too_long"
    )
    assert get_me(api, signer.mint(agent.spiffe_id, ttl=600)).status_code == 200


def test_it_requires_iat_on_a_login_svid(api, agent, signer):
    error = refusal(get_me(api, signer.mint(agent.spiffe_id, iat=None)))
    assert error["code"] == "missing_claim"
    assert "'iat'" in error["message"]


def test_it_refuses_a_delegation_actor_token_as_a_login(api, agent, signer):
    error = refusal(get_me(api, signer.act(agent.spiffe_id)))
    assert error["code"] == "wrong_audience"
    assert "cannot log in" in error["message"]
    # A login SVID is presented on every call while it lives (SPIFFE practice): not single use.
    token = signer.mint(agent.spiffe_id)
    assert [get_me(api, token).status_code for _ in range(3)] == [200, 200, 200]


def test_a_trust_domain_cannot_take_the_delegation_audience_as_its_login(db, settings, signer):
    from django.core.exceptions import ValidationError

    domain = TrustDomainFactory.build(
        name="other.test", jwks=signer.jwks, audience=settings.CUSTODY_DELEGATION_AUDIENCE
    )
    with pytest.raises(ValidationError) as refused:
        domain.full_clean()
    assert "audience" in refused.value.message_dict


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e400, -1e400, 10**400])
def test_a_signed_token_with_a_non_finite_time_claim_is_refused_not_a_500(
    api, agent, signer, claim, value
):
    """Only a holder of a registered key can send one, but it still gets a 401, never a 500."""
    api.raise_request_exception = False
    response = get_me(api, signer.mint(agent.spiffe_id, **{claim: value}))
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] in {
        "malformed_token",
        "token_expired",
        "token_not_yet_valid",
    }
