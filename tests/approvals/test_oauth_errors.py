"""The OAuth endpoints (/api/v1/token, /api/v1/introspect) answer errors in RFC 6749 §5.2's shape
(`error`, `error_description`), with Custody's envelope under `custody_error`; every other
endpoint keeps the envelope under `error`."""

import pytest
from rest_framework.test import APIClient

from tests.approvals import test_delegation as delegation
from tests.approvals.test_delegation import exchange, root_token

helper_b = delegation.helper_b  # the delegation tests' sub-agent B

pytestmark = pytest.mark.django_db

OAUTH_CODES = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "temporarily_unavailable",
    "server_error",
}


def oauth_error(response, status: int, error: str) -> dict:
    """The RFC 6749 §5.2 body, checked; Custody's envelope inside it returned."""
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == error, body
    assert body["error"] in OAUTH_CODES
    assert isinstance(body["error_description"], str) and body["error_description"]
    envelope = body["custody_error"]
    assert set(envelope) == {"code", "message", "fields"}
    assert body["error_description"] == envelope["message"]
    assert response["Cache-Control"] == "no-store"
    return envelope


def test_token_exchange_errors_are_rfc_6749(agent_api, helper_b, signer, privileges):
    token_a, _ = root_token(agent_api)
    actor = signer.act(helper_b.spiffe_id)

    wrong_type = exchange(agent_api, token_a, actor, grant_type="client_credentials")
    envelope = oauth_error(wrong_type, 400, "unsupported_grant_type")
    assert "grant_type" in envelope["fields"]

    missing = exchange(agent_api, token_a, None, as_json=True)
    assert "actor_token" in oauth_error(missing, 400, "invalid_request")["fields"]

    wider = exchange(agent_api, token_a, actor, scope="payments-db:write")
    assert oauth_error(wider, 400, "invalid_scope")["code"] == "invalid_scope"

    not_json = agent_api.post("/api/v1/token", "{", content_type="application/json")
    oauth_error(not_json, 400, "invalid_request")


def test_a_refused_sub_agent_is_invalid_target(agent_api, helper_b, signer, privileges):
    token_a, _ = root_token(agent_api)
    nobody = signer.act("spiffe://example.test/agents/nobody")
    oauth_error(exchange(agent_api, token_a, nobody), 400, "invalid_target")


def test_an_unauthenticated_client_is_invalid_client_with_its_challenge():
    for path in ("/api/v1/token", "/api/v1/introspect"):
        response = APIClient().post(path, {"token": "x"}, format="json")
        envelope = oauth_error(response, 401, "invalid_client")
        assert envelope["code"] == "not_authenticated"
        assert response["WWW-Authenticate"] == 'Bearer realm="custody"'


def test_introspection_errors_are_rfc_6749(agent_api, resource_server_api, privileges):
    missing = resource_server_api.post("/api/v1/introspect", {}, format="json")
    assert oauth_error(missing, 400, "invalid_request")["fields"] == {
        "token": ["This field is required."]
    }
    not_a_resource_server = agent_api.post("/api/v1/introspect", {"token": "x"}, format="json")
    envelope = oauth_error(not_a_resource_server, 403, "unauthorized_client")
    assert envelope["code"] == "not_a_resource_server"


def test_the_wrong_method_and_an_oversize_body_are_invalid_request(agent_api, settings):
    oauth_error(agent_api.get("/api/v1/token"), 405, "invalid_request")
    oauth_error(agent_api.get("/api/v1/introspect"), 405, "invalid_request")
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    oversize = agent_api.post("/api/v1/token", {"subject_token": "x" * 200}, format="json")
    assert oauth_error(oversize, 413, "invalid_request")["code"] == "payload_too_large"


def test_other_endpoints_keep_custodys_envelope(agent_api):
    response = APIClient().post("/api/v1/requests", {}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert "error_description" not in response.json()
    missing = agent_api.post("/api/v1/requests", {}, format="json")
    assert missing.status_code == 400 and isinstance(missing.json()["error"], dict)
