"""The development trust domain and `mint_svid`: development only, and able to mint actor tokens."""

import io

import jwt
import pytest
from django.core.management import CommandError, call_command

from agents.models import TrustDomain
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db
DEV_AGENT = "spiffe://dev.custody.internal/agents/invoice-bot"


@pytest.fixture
def dev_settings(settings, tmp_path):
    settings.DEBUG = True
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev_trust_domain_key.pem"
    return settings


@pytest.fixture
def dev_agent(db, sponsor, team):
    return AgentFactory(spiffe_id=DEV_AGENT, name="Invoice bot", sponsor=sponsor, team=team)


def mint(*args) -> str:
    out = io.StringIO()
    call_command("mint_svid", *args, stdout=out)
    return out.getvalue().strip()


def test_mint_svid_refuses_to_run_with_debug_off(settings, tmp_path):
    settings.DEBUG = False
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev_trust_domain_key.pem"
    with pytest.raises(CommandError, match="only with DEBUG=true"):
        mint(DEV_AGENT)
    assert not TrustDomain.objects.filter(name=settings.CUSTODY_DEV_TRUST_DOMAIN).exists()
    assert not settings.CUSTODY_DEV_KEY_FILE.exists()


def test_demo_request_refuses_to_run_with_debug_off(settings, tmp_path):
    settings.DEBUG = False
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev_trust_domain_key.pem"
    with pytest.raises(CommandError, match="development only"):
        call_command("demo_request", "--agent", DEV_AGENT, "--url", "http://127.0.0.1:9")
    assert not TrustDomain.objects.filter(name=settings.CUSTODY_DEV_TRUST_DOMAIN).exists()


def test_load_demo_forced_with_debug_off_registers_no_dev_trust_domain(settings, tmp_path):
    settings.DEBUG = False
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev_trust_domain_key.pem"
    call_command("load_demo", "--force", stdout=io.StringIO())
    assert not TrustDomain.objects.filter(name=settings.CUSTODY_DEV_TRUST_DOMAIN).exists()


def test_mint_svid_mints_a_login_or_an_actor_token_for_delegation(dev_settings, dev_agent, api):
    token = mint(DEV_AGENT)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == [dev_settings.CUSTODY_AUDIENCE]
    response = api.get("/api/v1/agents/me", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content

    token = mint(DEV_AGENT, "--for-delegation")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == [dev_settings.CUSTODY_DELEGATION_AUDIENCE]
    assert claims["exp"] - claims["iat"] <= dev_settings.CUSTODY_DELEGATION_TOKEN_MAX_SECONDS
    assert claims["jti"]
    response = api.get("/api/v1/agents/me", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "wrong_audience"


def test_mint_svid_refuses_lifetimes_custody_would_refuse(dev_settings, dev_agent):
    with pytest.raises(CommandError, match="between 1 and 300 seconds for an actor token"):
        mint(DEV_AGENT, "--for-delegation", "--ttl", "301")
    with pytest.raises(CommandError, match="between 1 and 3600 seconds for a login SVID"):
        mint(DEV_AGENT, "--ttl", "3601")
    assert mint(DEV_AGENT, "--for-delegation", "--ttl", "300")
