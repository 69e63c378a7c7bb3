"""Schema fuzzing: schemathesis drives every operation of `/api/schema/` against the live server
(the app on a free port, on the test database) with an agent's SVID, a resource server's SVID and
a person's session: mostly the caller the operation is for, now and then another one (who must
get a documented refusal). Bounded examples per operation. Every answer is judged against the
operation's documented responses: no 5xx, a documented status, a documented content type and
headers, and a body that validates against that status's schema (the Error envelope included).

Schemathesis' strategies and checks are driven directly from hypothesis: its pytest plugin
crashes on pytest 9."""

import itertools
import os
import re
import secrets

import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from approvals.models import Eligibility
from tests.approvals.conftest import intent, submit
from tests.factories import ResourceServerFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Bounded for the suite (about half a minute); CUSTODY_FUZZ_EXAMPLES=500 digs deeper by hand.
EXAMPLES_PER_OPERATION = int(os.environ.get("CUSTODY_FUZZ_EXAMPLES", "30"))
PEOPLES_PATHS = ("/api/v1/approvals/pending", "/api/v1/requests/{request_id}/decisions")
RESOURCE_SERVERS_PATHS = ("/api/v1/introspect",)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Examples run, per operation, for the summary printed at the end of the module.
CHECKED: dict[str, int] = {}
CSRF = secrets.token_hex(16)  # a 32-character CSRF secret, sent as cookie and header


@pytest.fixture
def workloads(agent, agent_api, privileges, signer, sponsor, team, settings):
    """The agent with some history to find (a live grant, a pending request), a resource server,
    and the sponsor's session."""
    settings.CUSTODY_MAX_WAIT_SECONDS = 1  # a pending request found by chance holds 1 s at most
    granted = submit(agent_api, "payments-db:read", task_id="fuzz-granted").json()
    pending = submit(agent_api, "payments-api:refund", task_id="fuzz-pending").json()
    assert (granted["status"], pending["status"]) == ("approved", "pending")
    # A pending eligibility request to find: the test default made the agent eligible for all.
    Eligibility.objects.filter(agent=agent, privilege=privileges["write"]).delete()
    asked = agent_api.post(
        "/api/v1/eligibility/requests",
        {"privilege": "payments-db:write", "justification": "fuzz"},
        format="json",
    )
    assert asked.status_code == 201, asked.content
    server = ResourceServerFactory(
        sponsor=sponsor, team=team, introspection_audiences=["payments-db"]
    )
    person = Client()
    person.force_login(sponsor)
    return {
        "agent": agent,
        "server": server,
        "signer": signer,
        "session": person.cookies["sessionid"].value,
        # Ids that name something, so that cases reach past the 404 too.
        "ids": {
            "request_id": [granted["id"], pending["id"]],
            "grant_id": [granted["grant"]["id"]],
            "eligibility_request_id": [asked.json()["id"]],
        },
        "privileges": [privilege.name for privilege in privileges.values()],
    }


def schema_operations() -> list[tuple[str, str]]:
    """Every (method, path) of the schema the live server serves, generated here in-process so
    that each operation is its own test."""
    from drf_spectacular.drainage import GENERATOR_STATS
    from drf_spectacular.generators import SchemaGenerator

    with GENERATOR_STATS.silence():
        document = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    ]


@pytest.fixture(scope="module")
def api_schema(live_server):
    """The schema as the live server serves it, loaded once for every operation's test."""
    return schemathesis.openapi.from_url(f"{live_server.url}/api/schema/")


@pytest.mark.parametrize("method,path", schema_operations())
def test_every_answer_is_one_the_schema_documents(api_schema, workloads, method, path):
    operation = api_schema[path][method]
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    cases = [operation.as_strategy(mode) for mode in modes]
    names = re.findall(r"{(\w+)}", path)
    for values in itertools.product(*(workloads["ids"][name] for name in names)) if names else []:
        known = dict(zip(names, values, strict=True))
        cases += [operation.as_strategy(mode, path_parameters=known) for mode in modes]
    cases = st.one_of(cases).flatmap(
        lambda case: st.sampled_from([None, *workloads["privileges"]]).map(
            lambda name: with_privilege(case, name)
        )
    )
    own = (
        "person"
        if path in PEOPLES_PATHS
        else "server"
        if path in RESOURCE_SERVERS_PATHS
        else "agent"
    )
    # Mostly the caller the operation is for; now and then another, refused as documented.
    callers = st.sampled_from([own] * 4 + [c for c in ("agent", "server", "person") if c != own])

    @given(case=cases, caller=callers)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case, caller):
        if caller == "person":
            response = case.call(
                headers={"X-CSRFToken": CSRF},
                cookies={"sessionid": workloads["session"], "csrftoken": CSRF},
            )
        else:
            workload = workloads[caller]
            # A fresh SVID per call, as a workload would present: nothing relies on reuse.
            token = workloads["signer"].mint(workload.spiffe_id, ttl=600)
            response = case.call(headers={"Authorization": f"Bearer {token}"})
        case.validate_response(response, checks=CHECKS)
        CHECKED[f"{method} {path}"] = CHECKED.get(f"{method} {path}", 0) + 1

    call()


def with_privilege(case, name):
    """Now and then a catalogued privilege and a well-formed intent around whatever else was
    generated (the duration above all), so that submissions reach policy, grants and tokens."""
    if name is not None and isinstance(case.body, dict) and "privilege" in case.body:
        case.body["privilege"] = name
        if case.media_type == "application/json":
            case.body["intent"] = intent()
            case.body["task_id"] = f"fuzz-{secrets.token_hex(4)}"
    return case


@pytest.fixture(scope="module", autouse=True)
def _summary():
    """Operations × examples judged, for the closing note (`pytest -s` shows it)."""
    yield
    if CHECKED:
        print(
            f"\nschema fuzz: {len(CHECKED)} operations, {sum(CHECKED.values())} examples judged "
            f"against their documented responses ({EXAMPLES_PER_OPERATION} per operation)"
        )


@pytest.fixture(autouse=True)
def _no_tasks_left_behind():
    """Requests the fuzzer files enqueue expiry and notification tasks; no worker runs here, and
    none of them may reach a later test's worker."""
    yield
    from config.celery import app

    app.control.purge()
