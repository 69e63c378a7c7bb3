"""One name and one format for each thing in the agents' API: the access token is `access_token`
with `expires_in` wherever it appears, a request's `decision_deadline` is not its grant's
`expires_at`, every timestamp is RFC 3339 in UTC (`…Z`), and `GET /api/v1/privileges` lists
what an agent may ask for."""

import re

import pytest
from django.utils import timezone

from approvals.models import AccessRequest, Eligibility, Grant
from tests.approvals.conftest import decide, submit

pytestmark = pytest.mark.django_db

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
TOKEN_FIELDS = {"access_token", "token_type", "expires_in"}


def assert_utc(value):
    assert isinstance(value, str) and RFC3339_UTC.match(value), value


def test_it_names_the_token_the_same_in_a_submission_a_refresh_and_a_poll(agent_api, privileges):
    body = submit(agent_api, "payments-db:read", duration=600).json()
    grant = Grant.objects.get(pk=body["grant"]["id"])
    assert body["grant"].keys() >= TOKEN_FIELDS
    assert body["grant"]["token_type"] == "Bearer"
    assert 0 < body["grant"]["expires_in"] <= 300
    assert "token" not in body["grant"] and "token_expires_at" not in body["grant"]
    assert_utc(body["grant"]["expires_at"])

    refreshed = agent_api.post(body["grant"]["token_url"])
    assert refreshed.status_code == 200, refreshed.content
    assert refreshed["Cache-Control"] == "no-store"
    token = refreshed.json()
    assert token.keys() == TOKEN_FIELDS | {"scope", "grant_id", "grant_expires_at"}
    assert (token["token_type"], token["grant_id"]) == ("Bearer", grant.pk)
    assert 0 < token["expires_in"] <= 300
    assert token["grant_expires_at"] == body["grant"]["expires_at"]

    polled = agent_api.get(f"/api/v1/requests/{body['id']}").json()
    assert {name: polled["grant"][name] for name in TOKEN_FIELDS} == dict.fromkeys(TOKEN_FIELDS)


def test_it_names_the_decision_deadline_apart_from_the_grants_end(
    agent_api, privileges, sponsor, backup_approver
):
    pending = submit(agent_api, "payments-db:write", duration=1200).json()
    access_request = AccessRequest.objects.get(pk=pending["id"])
    assert "expires_at" not in pending
    assert_utc(pending["decision_deadline"])
    assert_utc(pending["created_at"])
    assert pending["decision_deadline"] == access_request.decision_deadline.isoformat().replace(
        "+00:00", "Z"
    )
    decide(sponsor, pending["id"])
    decide(backup_approver, pending["id"])
    approved = agent_api.get(f"/api/v1/requests/{pending['id']}").json()
    grant = Grant.objects.get(access_request_id=pending["id"])
    assert approved["grant"]["expires_at"] == grant.expires_at.isoformat().replace("+00:00", "Z")
    assert approved["grant"]["expires_at"] != approved["decision_deadline"]

    listed = agent_api.get("/api/v1/grants").json()["results"][0]
    for name in ("issued_at", "expires_at"):
        assert_utc(listed[name])
    recorded = agent_api.post(
        f"/api/v1/grants/{grant.pk}/tool-calls",
        {"tool": "sql", "target": "invoices 2026-11", "outcome": "success"},
        format="json",
    ).json()
    assert_utc(recorded["recorded_at"])


def test_it_lists_the_catalogue_with_what_the_agent_may_ask_for(agent_api, agent, privileges):
    Eligibility.objects.filter(agent=agent, privilege=privileges["write"]).delete()
    Eligibility.objects.filter(agent=agent, privilege=privileges["read"]).update(
        max_duration_seconds=300,
        environment="production",
        ends_at=timezone.now().replace(year=timezone.now().year + 1),
    )
    privileges["admin"].enabled = False
    privileges["admin"].save()

    response = agent_api.get("/api/v1/privileges")
    assert response.status_code == 200, response.content
    entries = {entry["privilege"]: entry for entry in response.json()["results"]}
    # A disabled privilege is not in the catalogue.
    assert set(entries) == {"payments-api:refund", "payments-db:read", "payments-db:write"}
    read, write = entries["payments-db:read"], entries["payments-db:write"]
    assert (read["eligible"], read["max_duration_seconds"], read["risk"]) == (True, 300, "low")
    assert read["eligibility"]["environment"] == "production"
    assert_utc(read["eligibility"]["ends_at"])
    assert (write["eligible"], write["eligibility"], write["risk"]) == (False, None, "high")
    assert write["max_duration_seconds"] == privileges["write"].max_duration_seconds
    assert write["approvals_required"] == privileges["write"].approvals_required

    may_ask = agent_api.get("/api/v1/privileges?eligible=true").json()["results"]
    assert [entry["privilege"] for entry in may_ask] == ["payments-api:refund", "payments-db:read"]
    may_become = agent_api.get("/api/v1/privileges?eligible=false").json()["results"]
    assert [entry["privilege"] for entry in may_become] == ["payments-db:write"]


def test_it_refuses_a_catalogue_filter_it_does_not_know(agent_api, privileges):
    response = agent_api.get("/api/v1/privileges?eligible=yes")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_filter"


def test_it_shows_the_catalogue_only_to_agents(api, privileges, sponsor):
    assert api.get("/api/v1/privileges").status_code == 401
