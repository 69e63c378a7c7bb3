"""A policy change racing the agent's own traffic: real threads, every call through HTTP (the
agent API's submits and token refreshes, the web UI's revoke, the policy admin). The change
takes the policy-change lock before any row; decisions that may issue a grant take it shared
before they read the policy set; the re-evaluation after the commit locks agents, then grants,
then the chain head. What breaks when one of those is wrong: a deadlock (HTTP 500), or a grant
the new policy set denies that outlives the change."""

import re
import threading
import time
from collections import Counter

import pytest
from django.db import connection
from django.test import Client

from approvals.models import Grant, Policy
from audit.services import verify_chain
from tests.approvals.test_kill_switch import (
    Submitters,
    agent_client,
    live_grants,
    race_a_submit_held_at_its_insert,
    request_body,
    server_errors,
    web_client,
)
from tests.factories import AgentFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

REPETITIONS = 6
REVIEWED = re.compile(r'name="reviewed" value="([0-9a-f]+)"')


def freeze(agent) -> str:
    return f"""
@id("freeze-{agent.pk}")
@reason("This agent is off the payments database.")
forbid (principal, action, resource)
when {{ principal == Agent::"{agent.spiffe_id}" && resource.resource == "payments-db" }};
"""


class Busy:
    """Threads that refresh tokens of, and revoke, the agent's live grants until told to stop."""

    def __init__(self, signer, agent, sponsor):
        self.statuses: Counter = Counter()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._refresh, args=(agent_client(signer, agent), agent)),
            threading.Thread(target=self._revoke, args=(web_client(sponsor), agent)),
        ]

    def _count(self, status: int) -> None:
        with self._lock:
            self.statuses[status] += 1

    def _live(self, agent) -> list[int]:
        return list(Grant.objects.filter(agent=agent).live().values_list("pk", flat=True))

    def _refresh(self, client, agent):
        try:
            while not self.stop.is_set():
                for grant_id in self._live(agent):
                    self._count(client.post(f"/api/v1/grants/{grant_id}/token").status_code)
                time.sleep(0.02)
        finally:
            connection.close()

    def _revoke(self, client, agent):
        try:
            while not self.stop.is_set():
                # Every third live grant is revoked by its sponsor meanwhile.
                for grant_id in self._live(agent)[::3]:
                    response = client.post(f"/grants/{grant_id}/revoke/", {"reason": "drill"})
                    self._count(response.status_code)
                time.sleep(0.005)
        finally:
            connection.close()

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def policy_form(name: str, text: str) -> dict:
    return {
        "name": name,
        "description": "",
        "text": text,
        "enabled": "on",
        "revisions-TOTAL_FORMS": "0",
        "revisions-INITIAL_FORMS": "0",
    }


def change_policy(admin_client, name: str, text: str) -> tuple[int, int]:
    data = policy_form(name, text)
    shown = admin_client.post("/admin/approvals/policy/add/", data)
    found = REVIEWED.search(shown.content.decode())
    if found is None:
        return shown.status_code, 0
    saved = admin_client.post("/admin/approvals/policy/add/", {**data, "reviewed": found.group(1)})
    return shown.status_code, saved.status_code


def test_a_policy_change_racing_submits_refreshes_and_revokes_leaves_no_denied_grant(
    trust_domain, signer, sponsor, team, privileges, settings
):
    # The preview decides the latest requests again; the drills make thousands of them.
    settings.CUSTODY_POLICY_SIMULATION_REQUESTS = 50
    admin = UserFactory(username="policy-admin", is_staff=True, is_superuser=True)
    admin_client = Client(raise_request_exception=False)
    admin_client.force_login(admin)
    problems = []
    for repetition in range(REPETITIONS):
        agent = AgentFactory(
            spiffe_id=f"spiffe://example.test/agents/policy-busy-{repetition}",
            sponsor=sponsor,
            team=team,
        )
        with Submitters(signer, agent) as submitters, Busy(signer, agent, sponsor) as busy:
            submitters.wait_for_grants(3)
            answers = change_policy(admin_client, f"freeze-{repetition}", freeze(agent))
            time.sleep(0.05)  # the agent keeps asking under the new policy set
        changed_at = Policy.objects.filter(name=f"freeze-{repetition}").first()
        outcome = {
            "admin": answers,
            "live_grants": live_grants(agent),
            "5xx": server_errors(submitters.statuses) + server_errors(busy.statuses),
            # Nothing is granted once the change is in: a decision in flight commits before it.
            "issued_after_change": changed_at
            and Grant.objects.filter(agent=agent, issued_at__gt=changed_at.updated_at).count(),
        }
        expected = {"admin": (200, 302), "live_grants": 0, "5xx": 0, "issued_after_change": 0}
        if outcome != expected:
            problems.append((repetition, outcome, dict(submitters.statuses), dict(busy.statuses)))
    assert problems == []
    # The change itself ended grants (others ended by the sponsor, a refresh that asked the
    # new policy set first, or their own time): the drills really raced the re-evaluation.
    assert Grant.objects.filter(revoke_reason="policy_changed").count() > 0
    assert verify_chain().ok


def test_a_grant_decided_under_the_old_policy_while_the_change_commits_is_ended(
    trust_domain, signer, sponsor, agent, privileges
):
    """The submission reads the old policy set (it would grant at once) and is then held at
    its first write (another session holds the requests table) while an admin saves a change
    that denies it. The change waits for the decision in flight, so the re-evaluation after it
    sees the grant and ends it; without that wait the change would commit first, re-evaluate
    nothing, and the grant would live on under a policy that denies it."""
    admin_client = Client(raise_request_exception=False)
    admin_client.force_login(UserFactory(username="policy-admin", is_staff=True, is_superuser=True))
    data = policy_form("freeze", freeze(agent))
    reviewed = REVIEWED.search(
        admin_client.post("/admin/approvals/policy/add/", data).content.decode()
    ).group(1)
    data["reviewed"] = reviewed
    if connection.vendor != "postgresql":
        # SQLite has one writer at a time (IMMEDIATE transactions): the two orders it allows.
        submitted = agent_client(signer, agent).post(
            "/api/v1/requests", request_body("payments-db:read", "before"), format="json"
        )
        assert submitted.json()["status"] == "approved", submitted.content
        assert admin_client.post("/admin/approvals/policy/add/", data).status_code == 302
        after = agent_client(signer, agent).post(
            "/api/v1/requests", request_body("payments-db:read", "after"), format="json"
        )
        assert after.json()["status"] == "denied", after.content
        assert live_grants(agent) == 0
        return
    submitted, changed = race_a_submit_held_at_its_insert(
        signer, agent, lambda: admin_client.post("/admin/approvals/policy/add/", data)
    )

    assert changed.status_code == 302
    assert submitted.status_code == 201, submitted.content
    assert submitted.json()["status"] == "approved"  # decided under the old set
    grant = Grant.objects.get(pk=submitted.json()["grant"]["id"])
    assert grant.revoke_reason == "policy_changed"
    assert live_grants(agent) == 0
