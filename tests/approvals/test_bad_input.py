"""Bad input gets a 4xx with a clear message, never a 500: property tests over every
integer-like parameter of the agents' and people's API (query, path and body)."""

import re

import pytest
from hypothesis import example, given

from approvals.models import AccessRequest
from tests.approvals.conftest import intent, person_client, submit
from tests.fuzz import bad_input, in_path, integer_like_json, integer_like_text

pytestmark = pytest.mark.django_db

WHOLE = re.compile(r"[0-9]+")


def error_of(response) -> dict:
    assert 400 <= response.status_code < 500, (response.status_code, response.content)
    error = response.json()["error"]
    assert error["code"] and error["message"]
    return error


@pytest.fixture
def settled(agent_api, privileges):
    """A request granted at once (so `wait` never holds the answer) and its live grant."""
    body = submit(agent_api).json()
    assert body["status"] == "approved"
    return body["id"], body["grant"]["id"]


def test_wait_that_is_not_a_plain_whole_number_is_a_400(agent_api, settled):
    request_id, _ = settled

    @bad_input
    @given(wait=integer_like_text)
    @example(wait="²")
    @example(wait="٣")
    @example(wait="99999999999999999999")
    def check(wait):
        response = agent_api.get(f"/api/v1/requests/{request_id}", {"wait": wait})
        if WHOLE.fullmatch(wait) and int(wait) <= 30:
            assert response.status_code == 200, response.content
        else:
            error = error_of(response)
            assert error["code"] == "invalid_wait"
            assert "whole number of seconds" in error["message"]

    check()


AGENT_PATHS = [
    ("get", "/api/v1/requests/{}"),
    ("post", "/api/v1/requests/{}/cancel"),
    ("get", "/api/v1/grants/{}"),
    ("post", "/api/v1/grants/{}/token"),
    ("post", "/api/v1/grants/{}/extend"),
    ("post", "/api/v1/grants/{}/complete"),
    ("post", "/api/v1/grants/{}/tool-calls"),
]


@pytest.mark.parametrize("method,path", AGENT_PATHS)
def test_an_id_in_the_path_that_names_nothing_is_a_404(agent_api, settled, method, path):
    @bad_input
    @given(value=integer_like_text)
    @example(value="99999999999999999999")
    @example(value="9223372036854775807")
    @example(value="²")
    def check(value):
        if WHOLE.fullmatch(value) and int(value) in settled:
            return  # the agent's own request or grant: not bad input
        response = getattr(agent_api, method)(
            path.format(in_path(value)),
            {"tool": "sql", "outcome": "success", "duration_seconds": 60, "intent": intent()},
            format="json",
        )
        assert response.status_code == 404, (value, response.status_code, response.content)

    check()


def test_an_id_in_a_persons_decision_path_that_names_nothing_is_a_404(sponsor, settled):
    client = person_client(sponsor)

    @bad_input
    @given(value=integer_like_text)
    @example(value="99999999999999999999")
    def check(value):
        if WHOLE.fullmatch(value) and int(value) in settled:
            return
        response = client.post(
            f"/api/v1/requests/{in_path(value)}/decisions", {"verdict": "deny"}, format="json"
        )
        assert response.status_code == 404, (value, response.status_code, response.content)

    check()


def test_a_duration_that_is_not_a_whole_number_in_range_is_a_400(agent_api, privileges, settled):
    _, grant_id = settled
    counter = iter(range(10**6))
    before = AccessRequest.objects.count()

    @bad_input
    @given(duration=integer_like_json)
    @example(duration="²")
    @example(duration=99999999999999999999)
    @example(duration=1.5)
    @example(duration=-1)
    def check(duration):
        nonlocal before
        for call in (
            lambda: submit(agent_api, task_id=f"fuzz-{next(counter)}", duration=duration),
            lambda: agent_api.post(
                f"/api/v1/grants/{grant_id}/extend",
                {"duration_seconds": duration, "intent": intent()},
                format="json",
            ),
        ):
            response = call()
            assert response.status_code < 500, (duration, response.status_code, response.content)
            if response.status_code != 201:
                error = error_of(response)
                assert "duration_seconds" in error["fields"] or error["code"] != "invalid"
                assert AccessRequest.objects.count() == before  # nothing half-written
            before = AccessRequest.objects.count()

    check()


def test_a_delegation_duration_that_is_not_a_whole_number_is_a_400(agent_api, settled):
    @bad_input
    @given(duration=integer_like_text)
    @example(duration="²")
    @example(duration="99999999999999999999")
    def check(duration):
        response = agent_api.post(
            "/api/v1/token",
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": "not-a-token",
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "actor_token": "not-a-token",
                "actor_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "duration_seconds": duration,
                "intent_action": "fetch",
                "intent_target": "rows",
                "intent_justification": "sub-task",
            },
        )
        assert 400 <= response.status_code < 500, (duration, response.status_code)

    check()


NUL_BEARING = [{"note": "a\x00b"}, {"a\x00": 1}, {"nested": [{"deep": "\x00"}]}]


@pytest.mark.parametrize("value", NUL_BEARING)
def test_json_carrying_a_nul_character_is_a_400(agent_api, settled, value):
    """PostgreSQL's jsonb cannot hold U+0000: the request says so instead of failing."""
    _, grant_id = settled
    before = AccessRequest.objects.count()
    response = submit(agent_api, task_id="nul", context=value)
    assert "context" in error_of(response)["fields"]
    assert AccessRequest.objects.count() == before
    response = agent_api.post(
        f"/api/v1/grants/{grant_id}/tool-calls",
        {"tool": "sql", "outcome": "success", "detail": value},
        format="json",
    )
    assert "detail" in error_of(response)["fields"]
