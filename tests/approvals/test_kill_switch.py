"""The kill switch and people's decisions hold while the agent itself is busy: real PostgreSQL,
real threads, every call through HTTP (the agent API, the decisions API, the web UI's suspend).

Every transaction takes its locks in one order (approvals/services.py, README "Lock order");
these drills are what breaks when one does not: a deadlock (HTTP 500), or a grant that outlives
the suspension that should have ended it."""

import threading
import time
from collections import Counter

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from agents.models import Agent
from approvals.models import AccessRequest, Grant
from audit.services import verify_chain
from config.celery import app as celery_app
from tests.approvals.conftest import intent
from tests.factories import AgentFactory, PrivilegeFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

REPETITIONS = 20
SUBMITTERS = 2


@pytest.fixture(autouse=True, scope="module")
def _no_backlog_left_for_a_later_worker():
    """The drills issue hundreds of grants, each enqueueing its expiry and notices on commit,
    and no worker runs here: drop those messages afterwards, so a worker started by a later
    test (or run) does not begin with a stale backlog."""
    yield
    queues = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()} | {"celery"}
    with celery_app.connection_for_write() as broker:
        for queue in sorted(queues):
            broker.default_channel.queue_purge(queue)


def agent_client(signer, agent) -> APIClient:
    # A 500 is an answer to count, not an exception in the test's thread.
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
    return client


def person_client(user) -> APIClient:
    client = APIClient(raise_request_exception=False)
    client.force_login(user)
    return client


def web_client(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def request_body(privilege: str, task_id: str, duration: int = 60) -> dict:
    return {
        "privilege": privilege,
        "task_id": task_id,
        "duration_seconds": duration,
        "intent": intent(),
    }


class Submitters:
    """Threads that each submit auto-approved requests (fresh task ids) in a loop until told to
    stop or until the agent is refused (401: suspended)."""

    def __init__(self, signer, agent, count: int = SUBMITTERS):
        self.statuses: Counter = Counter()
        self.approved = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._run, args=(agent_client(signer, agent), f"{agent.pk}-{n}")
            )
            for n in range(count)
        ]

    def _run(self, client, name):
        try:
            for sequence in range(10_000):
                if self.stop.is_set():
                    return
                response = client.post(
                    "/api/v1/requests",
                    request_body("payments-db:read", f"{name}-{sequence}"),
                    format="json",
                )
                with self._lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code == 201 and response.json()["status"] == "approved":
                        self.approved += 1
                if response.status_code == 401:
                    return
        finally:
            connection.close()

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def wait_for_grants(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.approved < count and time.monotonic() < deadline:
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def live_grants(agent) -> int:
    return Grant.objects.filter(
        agent=agent, revoked_at__isnull=True, expires_at__gt=timezone.now()
    ).count()


def server_errors(statuses: Counter) -> int:
    return sum(count for status, count in statuses.items() if status >= 500)


def approve(person, request_ids, decisions: Counter) -> None:
    client = person_client(person)
    try:
        for request_id in request_ids:
            response = client.post(
                f"/api/v1/requests/{request_id}/decisions", {"verdict": "approve"}, format="json"
            )
            decisions[response.status_code] += 1
    finally:
        connection.close()


def ask(client, barrier, privilege: str, task_id: str, outcomes: dict) -> None:
    try:
        barrier.wait()
        response = client.post("/api/v1/requests", request_body(privilege, task_id), format="json")
        outcomes[privilege] = (response.status_code, response.json().get("status"))
    finally:
        connection.close()


def test_the_kill_switch_holds_against_the_agents_own_concurrent_submissions(
    trust_domain, signer, sponsor, team, privileges
):
    problems = []
    for repetition in range(REPETITIONS):
        agent = AgentFactory(
            spiffe_id=f"spiffe://example.test/agents/busy-{repetition}", sponsor=sponsor, team=team
        )
        with Submitters(signer, agent) as submitters:
            submitters.wait_for_grants(2)
            suspended = web_client(sponsor).post(
                f"/agents/{agent.pk}/suspend/", {"reason": "kill switch drill"}
            )
        agent.refresh_from_db()
        outcome = {
            "suspend": suspended.status_code,
            "agent": agent.status,
            "live_grants": live_grants(agent),
            "submit_5xx": server_errors(submitters.statuses),
        }
        if outcome != {"suspend": 302, "agent": "suspended", "live_grants": 0, "submit_5xx": 0}:
            problems.append((repetition, outcome, dict(submitters.statuses)))

    assert problems == []
    assert verify_chain().ok


def test_decisions_hold_against_the_agents_own_concurrent_submissions(
    trust_domain, signer, sponsor, team, privileges
):
    backup = UserFactory(username="backup")
    problems = []
    for repetition in range(REPETITIONS):
        agent = AgentFactory(
            spiffe_id=f"spiffe://example.test/agents/decided-{repetition}",
            sponsor=sponsor,
            team=team,
        )
        assign_perm("agents.approve_for_agent", backup, agent)
        own = agent_client(signer, agent)
        waiting = [
            own.post(
                "/api/v1/requests",
                request_body("payments-api:refund", f"refund-{n}"),
                format="json",
            ).json()["id"]
            for n in range(6)
        ]
        decisions: Counter = Counter()

        with Submitters(signer, agent) as submitters:
            submitters.wait_for_grants(1)
            approvers = [
                threading.Thread(target=approve, args=(sponsor, waiting[0::2], decisions)),
                threading.Thread(target=approve, args=(backup, waiting[1::2], decisions)),
            ]
            for thread in approvers:
                thread.start()
            for thread in approvers:
                thread.join(timeout=30)
            suspended = web_client(sponsor).post(
                f"/agents/{agent.pk}/suspend/", {"reason": "decisions drill"}
            )
        agent.refresh_from_db()
        outcome = {
            "decisions": dict(decisions),
            "suspend": suspended.status_code,
            "agent": agent.status,
            "live_grants": live_grants(agent),
            "submit_5xx": server_errors(submitters.statuses),
        }
        expected = {
            "decisions": {201: len(waiting)},
            "suspend": 302,
            "agent": "suspended",
            "live_grants": 0,
            "submit_5xx": 0,
        }
        if outcome != expected:
            problems.append((repetition, outcome, dict(submitters.statuses)))

    assert problems == []
    assert AccessRequest.objects.filter(status="pending").count() == 0
    assert verify_chain().ok


# --- a request in flight while the suspension commits -------------------------------------------


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def _until(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def race_a_submit_held_at_its_insert(signer, agent, rival) -> tuple:
    """PostgreSQL: an agent's submission is held at its first write (another session holds the
    requests table in SHARE mode) while `rival()` runs in a second thread, which either commits
    at once or waits for the submission in flight; then the table is released. Answers
    (submission, rival)."""
    table = AccessRequest._meta.db_table
    holding, release = threading.Event(), threading.Event()
    answers = {}

    def hold_the_requests_table():
        try:
            with connection.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")  # noqa: S608
                holding.set()
                release.wait(30)
                cursor.execute("COMMIT")
        finally:
            connection.close()

    def in_thread(name, call):
        def run():
            try:
                answers[name] = call()
            finally:
                connection.close()

        return threading.Thread(target=run)

    blocker = threading.Thread(target=hold_the_requests_table)
    blocker.start()
    assert holding.wait(10)
    submitter = in_thread(
        "submit",
        lambda: agent_client(signer, agent).post(
            "/api/v1/requests", request_body("payments-db:read", "in-flight"), format="json"
        ),
    )
    submitter.start()
    assert _until(lambda: _waiting_on_locks() >= 1)  # the submission waits at its INSERT
    rival_thread = in_thread("rival", rival)
    rival_thread.start()
    # The rival either commits right now, or waits for the request in flight.
    _until(lambda: not rival_thread.is_alive() or _waiting_on_locks() >= 2, timeout=5)
    release.set()
    for thread in (blocker, submitter, rival_thread):
        thread.join(timeout=30)
    return answers["submit"], answers["rival"]


def test_a_suspension_committing_while_a_request_is_in_flight_leaves_no_live_grant(
    trust_domain, signer, sponsor, agent, privileges
):
    """The submission is held at its first write (another session holds the requests table),
    after it authenticated as an active agent; the sponsor presses the kill switch meanwhile."""
    if connection.vendor != "postgresql":
        # SQLite has one writer at a time, so nothing can be held mid-flight: the two orders
        # a whole-database lock allows are checked instead.
        submitted = agent_client(signer, agent).post(
            "/api/v1/requests", request_body("payments-db:read", "before"), format="json"
        )
        assert submitted.status_code == 201, submitted.content
        assert (
            web_client(sponsor).post(f"/agents/{agent.pk}/suspend/", {"reason": "leak"}).status_code
            == 302
        )
        after = agent_client(signer, agent).post(
            "/api/v1/requests", request_body("payments-db:read", "after"), format="json"
        )
        assert after.status_code in (401, 409), after.content
        agent.refresh_from_db()
        assert agent.status == Agent.Status.SUSPENDED
        assert live_grants(agent) == 0
        return
    submitted, suspended = race_a_submit_held_at_its_insert(
        signer,
        agent,
        lambda: web_client(sponsor).post(f"/agents/{agent.pk}/suspend/", {"reason": "leak seen"}),
    )

    agent.refresh_from_db()
    assert suspended.status_code == 302
    assert submitted.status_code in (201, 409), submitted.content
    assert agent.status == Agent.Status.SUSPENDED
    assert live_grants(agent) == 0


# --- toxic pairs: two halves submitted at once --------------------------------------------------


def test_two_halves_of_a_toxic_pair_submitted_at_once_are_never_both_automatic(
    trust_domain, signer, sponsor, team, privileges
):
    ledger = PrivilegeFactory(resource="ledger", action="read", risk="low")
    ledger.toxic_with.add(privileges["read"])
    both_automatic = []
    for repetition in range(REPETITIONS):
        agent = AgentFactory(
            spiffe_id=f"spiffe://example.test/agents/toxic-{repetition}", sponsor=sponsor, team=team
        )
        barrier = threading.Barrier(2)
        outcomes = {}

        threads = [
            threading.Thread(
                target=ask,
                args=(client, barrier, privilege, f"{privilege}-{repetition}", outcomes),
            )
            for client, privilege in (
                (agent_client(signer, agent), "payments-db:read"),
                (agent_client(signer, agent), "ledger:read"),
            )
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        if sorted(outcomes.values()) != [(201, "approved"), (201, "pending")]:
            both_automatic.append((repetition, outcomes))
    assert both_automatic == []
