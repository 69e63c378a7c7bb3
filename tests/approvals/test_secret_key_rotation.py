"""Rotating SECRET_KEY: with the old one in SECRET_KEY_FALLBACKS, tokens are still issued and the
old ones still verify; without it, a 503 that tells the operator what to do, never a 500.

Each `restarted` block stands for the processes starting again under the new settings (they
forget the decrypted signing key they held)."""

import contextlib

import jwt
import pytest
from django.core.management import call_command
from django.test import override_settings

from approvals import tokens
from approvals.models import AccessRequest, Grant
from tests.approvals.conftest import submit

pytestmark = pytest.mark.django_db

NEW_SECRET = "a-new-secret-key-after-rotation-0123456789abcdefghij"


@contextlib.contextmanager
def restarted(**settings):
    with override_settings(**settings):
        tokens._current_cache = None
        tokens._public_cache.clear()
        yield
    tokens._current_cache = None


def introspect(client, token):
    return client.post("/api/v1/introspect", {"token": token}, format="json").json()


def verifies_offline(api, token) -> bool:
    kid = jwt.get_unverified_header(token)["kid"]
    keys = {key["kid"]: key for key in api.get("/.well-known/jwks.json").json()["keys"]}
    claims = jwt.decode(
        token,
        jwt.PyJWK(keys[kid]).key,
        algorithms=["ES256"],
        options={"verify_aud": False},
    )
    return claims["jti"] != ""


def test_tokens_are_still_issued_after_rotating_secret_key_with_a_fallback(
    settings, agent_api, api, privileges, resource_server_api
):
    old_secret = settings.SECRET_KEY
    before = submit(agent_api).json()["grant"]["access_token"]
    with restarted(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=[old_secret]):
        response = submit(agent_api, task_id="task-2")
        assert response.status_code == 201, response.content
        after = response.json()["grant"]["access_token"]
        assert introspect(resource_server_api, before)["active"] is True
        assert introspect(resource_server_api, after)["active"] is True
        assert verifies_offline(api, before) and verifies_offline(api, after)


def test_without_the_fallback_issuance_is_a_clear_503_until_the_operator_acts(
    settings, agent_api, api, privileges, resource_server_api
):
    before = submit(agent_api).json()["grant"]["access_token"]
    requests, grants = AccessRequest.objects.count(), Grant.objects.count()
    with restarted(SECRET_KEY=NEW_SECRET, SECRET_KEY_FALLBACKS=[]):
        refused = submit(agent_api, task_id="task-2")
        assert refused.status_code == 503, refused.content
        assert refused["Retry-After"] == str(tokens.SIGNING_KEY_RETRY_SECONDS)
        error = refused.json()["error"]
        assert error["code"] == "signing_key_unavailable"
        assert "SECRET_KEY_FALLBACKS" in error["message"]
        assert "rotate_signing_key" in error["message"]
        assert (AccessRequest.objects.count(), Grant.objects.count()) == (requests, grants)
        # Tokens already issued still verify: only the private key is out of reach.
        assert introspect(resource_server_api, before)["active"] is True
        # The operator rotates the signing key: issuance works again under the new SECRET_KEY.
        call_command("rotate_signing_key")
        response = submit(agent_api, task_id="task-3")
        assert response.status_code == 201, response.content
        assert introspect(resource_server_api, response.json()["grant"]["access_token"])["active"]
        assert introspect(resource_server_api, before)["active"] is True
