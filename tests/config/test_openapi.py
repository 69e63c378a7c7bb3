"""The OpenAPI document, as the server serves it, is a contract a client can be generated from:
OpenAPI 3.1 with no generator warning, a body and a status list for every operation, the error
envelope named on every error, two security schemes and one name per component and operation.
(tests/approvals/test_schema_fuzz.py checks the live answers against it.)"""

import pytest
import yaml
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db

ERROR = {"$ref": "#/components/schemas/Error"}
# RFC 6749 §5.2's shape, which the OAuth endpoints answer (Custody's envelope inside it).
OAUTH_ERROR = {"$ref": "#/components/schemas/OAuthError"}
OAUTH_OPERATIONS = {"token_exchange", "introspect"}
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def document():
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def test_the_generator_validates_it_with_no_error_and_no_warning(tmp_path):
    # --fail-on-warn raises on the first warning or error: `make lint` runs the same.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "s.yml"))
    assert yaml.safe_load((tmp_path / "s.yml").read_text())["openapi"] == "3.1.0"


def test_the_server_serves_it_as_openapi_3_1():
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert response.json()["openapi"] == "3.1.0"


def test_the_oauth_endpoints_document_rfc_6749_errors(document):
    component = document["components"]["schemas"]["OAuthError"]
    assert set(component["required"]) == {"error", "error_description", "custody_error"}
    codes = document["components"]["schemas"]["OAuthErrorCodeEnum"]["enum"]
    assert {"invalid_request", "invalid_client", "invalid_grant", "invalid_scope"} <= set(codes)
    assert {"unauthorized_client", "unsupported_grant_type", "invalid_target"} <= set(codes)


def test_every_operation_has_a_meaningful_unique_id(document):
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids)), ids
    assert not [name for name in ids if name.startswith("api_v1_")], ids
    assert {"requests_create", "grants_token", "token_exchange", "privileges_list"} <= set(ids)


def test_every_operation_documents_its_answers_and_its_errors_with_the_envelope(document):
    for path, method, operation in operations(document):
        responses = operation["responses"]
        successes = [code for code in responses if code.startswith("2")]
        assert successes, (method, path)
        for code in successes:
            assert "content" in responses[code], (method, path, code, "no response body")
        errors = {code: answer for code, answer in responses.items() if code[0] in "45"}
        assert "503" in errors, (method, path)
        envelope = OAUTH_ERROR if operation["operationId"] in OAUTH_OPERATIONS else ERROR
        for code, answer in errors.items():
            schema = answer["content"]["application/json"]["schema"]
            assert schema == envelope, (method, path, code)
        # The headers a client acts on are part of the contract (the fuzz checks them).
        for code, header in (("401", "WWW-Authenticate"), ("429", "Retry-After")):
            if code in errors:
                assert errors[code]["headers"][header]["required"] is True, (method, path)
        assert "Retry-After" in errors["503"]["headers"], (method, path)
        if "{" in path:
            assert "404" in errors, (method, path)
        if operation.get("security") and {} not in operation["security"]:
            assert "401" in errors, (method, path)
        if "requestBody" in operation:
            assert "400" in errors, (method, path)


def test_each_input_has_its_own_component(document):
    def body(path):
        content = document["paths"][path]["post"]["requestBody"]["content"]
        return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]

    names = {
        path: body(path)
        for path in (
            "/api/v1/requests",
            "/api/v1/token",
            "/api/v1/grants/{grant_id}/extend",
            "/api/v1/grants/{grant_id}/tool-calls",
            "/api/v1/introspect",
            "/api/v1/eligibility/requests",
            "/api/v1/requests/{request_id}/decisions",
        )
    }
    assert len(set(names.values())) == len(names), names
    assert names["/api/v1/requests"] == "RequestInput"
    assert names["/api/v1/token"] == "TokenExchangeInput"
    request_input = document["components"]["schemas"]["RequestInput"]
    assert {"privilege", "task_id", "duration_seconds", "intent"} <= set(request_input["required"])


def test_agents_and_resource_servers_use_a_bearer_scheme_and_people_their_session(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["workloadIdentity"] == {
        **schemes["workloadIdentity"],
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert schemes["cookieAuth"]["in"] == "cookie"
    paths = document["paths"]
    assert paths["/api/v1/requests"]["post"]["security"] == [{"workloadIdentity": []}]
    assert paths["/api/v1/introspect"]["post"]["security"] == [{"workloadIdentity": []}]
    assert paths["/api/v1/approvals/pending"]["get"]["security"] == [{"cookieAuth": []}]
    # Public documents need nothing (and nothing is required globally).
    assert "security" not in document
    assert paths["/.well-known/jwks.json"]["get"].get("security", [{}]) == [{}]


def test_the_access_token_has_one_name_in_every_answer(document):
    schemas = document["components"]["schemas"]
    for name in ("AccessToken", "TokenExchangeIssued", "RequestGrant"):
        properties = schemas[name]["properties"]
        assert {"access_token", "token_type", "expires_in"} <= set(properties), name
        assert not {"token", "token_expires_at"} & set(properties), name
    assert "decision_deadline" in schemas["AccessRequest"]["properties"]
    assert "expires_at" not in schemas["AccessRequest"]["properties"]
