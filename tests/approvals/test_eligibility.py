"""Eligibility through the agent API: what an agent may ask for at all. The shipped policy denies
requests outside it (with a reason that says so), over its maximum duration, in another
environment and after its end date; agents list it and ask to become eligible, and the people
who decide the agent's requests answer. Agents here are eligible only for what a test grants."""

import importlib
from datetime import timedelta

import pytest
import time_machine
from django.apps import apps as django_apps
from django.utils import timezone
from rest_framework.test import APIClient

from approvals.models import Eligibility, EligibilityRequest, Policy, PolicyRevision
from approvals.policy import DEFAULT_POLICY_TEXT
from approvals.services import eligibility_grant, eligibility_remove
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals.conftest import person_client, submit
from tests.approvals.test_delegation import exchange
from tests.factories import AgentFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.eligibility]


def make_eligible(agent, privilege, **limits):
    return eligibility_grant(agent=agent, privilege=privilege, by=agent.sponsor, **limits)


def test_it_denies_a_request_for_a_privilege_the_agent_is_not_eligible_for(
    agent_api, agent, privileges
):
    response = submit(agent_api, "payments-db:write")

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "denied"
    assert body["decision"]["policies"] == ["not-eligible"]
    assert body["decision"]["reason"] == (
        "Invoice bot is not eligible for payments-db:write; its sponsor can make it eligible."
    )


def test_it_grants_within_the_eligibility_as_before(agent_api, agent, privileges):
    make_eligible(agent, privileges["read"])

    body = submit(agent_api, "payments-db:read", duration=600).json()

    assert body["status"] == "approved"
    assert body["grant"]["scope"] == "payments-db:read"


def test_it_denies_more_time_than_the_eligibility_allows(agent_api, agent, privileges):
    make_eligible(agent, privileges["read"], max_duration_seconds=300)

    body = submit(agent_api, "payments-db:read", duration=600).json()

    assert body["status"] == "denied"
    assert body["decision"]["policies"] == ["eligibility-max-duration"]
    assert body["decision"]["reason"] == (
        "Invoice bot is eligible for payments-db:read for at most 5 min at a time; "
        "10 min was asked for."
    )
    assert submit(agent_api, "payments-db:read", duration=300).json()["status"] == "approved"


def test_it_denies_another_environment(agent_api, agent, privileges):
    make_eligible(agent, privileges["read"], environment="staging")

    body = submit(agent_api, "payments-db:read", context={"environment": "production"}).json()

    assert body["status"] == "denied"
    assert body["decision"]["reason"] == (
        "Invoice bot is eligible for payments-db:read only in staging, not in production."
    )
    staging = submit(
        agent_api, "payments-db:read", task_id="task-2", context={"environment": "staging"}
    )
    assert staging.json()["status"] == "approved"


def test_it_denies_after_the_end_date(agent_api, agent, privileges, signer):
    ends = timezone.now() + timedelta(days=2)
    make_eligible(agent, privileges["read"], ends_at=ends)
    assert submit(agent_api, "payments-db:read").json()["status"] == "approved"

    with time_machine.travel(ends + timedelta(minutes=1)):
        later = APIClient()  # an SVID of that moment
        later.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
        body = submit(later, "payments-db:read", task_id="task-2").json()
        listed = later.get("/api/v1/eligibility").json()["results"]

    assert body["status"] == "denied"
    assert body["decision"]["policies"] == ["eligibility-ended"]
    assert body["decision"]["reason"] == (
        f"Invoice bot's eligibility for payments-db:read ended on {ends:%Y-%m-%d %H:%M} UTC."
    )
    assert listed == []


def test_a_removed_eligibility_denies_the_next_request_and_stays_as_history(
    agent_api, agent, privileges, sponsor
):
    eligibility = make_eligible(agent, privileges["read"])
    eligibility_remove(eligibility_id=eligibility.pk, agent=agent, by=sponsor)

    body = submit(agent_api, "payments-db:read").json()

    assert body["status"] == "denied"
    assert body["decision"]["policies"] == ["not-eligible"]
    kept = Eligibility.objects.get(pk=eligibility.pk)
    assert (kept.removed_by, kept.removed_at is not None) == ("sponsor", True)
    verbs = list(AuditEvent.objects.filter(agent_id=agent.pk).values_list("verb", flat=True))
    assert "eligibility.granted" in verbs and "eligibility.removed" in verbs
    assert verify_chain().ok


def test_a_sub_agent_must_itself_be_eligible(agent_api, agent, privileges, signer, sponsor, team):
    """Delegation narrows what the parent holds, and the sub-agent must be eligible too."""
    make_eligible(agent, privileges["read"])
    helper = AgentFactory(
        spiffe_id="spiffe://example.test/agents/helper", name="Helper", sponsor=sponsor, team=team
    )
    token = submit(agent_api, "payments-db:read", duration=900).json()["grant"]["access_token"]

    refused = exchange(agent_api, token, signer.act(helper.spiffe_id), duration_seconds=300)

    assert refused.status_code == 403, refused.content
    assert (
        "Helper is not eligible for payments-db:read" in refused.json()["custody_error"]["message"]
    )

    make_eligible(helper, privileges["read"])
    allowed = exchange(agent_api, token, signer.act(helper.spiffe_id), duration_seconds=300)
    assert allowed.status_code == 200, allowed.content


# --- listing and asking ------------------------------------------------------------------------


def test_an_agent_lists_only_its_own_eligibility_in_force(agent_api, agent, privileges, sponsor):
    make_eligible(agent, privileges["read"], max_duration_seconds=600, environment="staging")
    removed = make_eligible(agent, privileges["refund"])
    eligibility_remove(eligibility_id=removed.pk, agent=agent, by=sponsor)
    other = AgentFactory()
    make_eligible(other, privileges["write"])

    response = agent_api.get("/api/v1/eligibility")

    assert response.status_code == 200
    assert [
        (row["privilege"], row["max_duration_seconds"], row["environment"], row["granted_by"])
        for row in response.json()["results"]
    ] == [("payments-db:read", 600, "staging", "sponsor")]


def test_listing_needs_an_agent(api, privileges):
    assert api.get("/api/v1/eligibility").status_code == 401


def ask(client, privilege="payments-db:write", **extra):
    body = {"privilege": privilege, "justification": "Nightly corrections need it.", **extra}
    return client.post("/api/v1/eligibility/requests", body, format="json")


def test_an_agent_asks_and_its_sponsor_approves_in_the_web_ui(
    agent_api, agent, privileges, sponsor, client
):
    asked = ask(agent_api, max_duration_seconds=900)
    assert asked.status_code == 201, asked.content
    request_id = asked.json()["id"]
    assert asked.json()["status"] == "pending"
    assert submit(agent_api, "payments-db:write").json()["status"] == "denied"

    client.force_login(sponsor)
    decided = client.post(
        f"/agents/{agent.pk}/eligibility/requests/{request_id}/decide/",
        {"verdict": "approve", "comment": "yes"},
    )

    assert decided.status_code == 302
    polled = agent_api.get(f"/api/v1/eligibility/requests/{request_id}").json()
    assert polled["status"] == "approved" and polled["eligibility_id"] is not None
    assert [row["privilege"] for row in agent_api.get("/api/v1/eligibility").json()["results"]] == [
        "payments-db:write"
    ]
    body = submit(agent_api, "payments-db:write", duration=900, task_id="task-2").json()
    assert body["status"] == "pending"  # eligible: now people decide the request itself
    verbs = AuditEvent.objects.filter(agent_id=agent.pk).values_list("verb", flat=True)
    assert {"eligibility.requested", "eligibility.request_decided", "eligibility.granted"} <= set(
        verbs
    )


def test_an_outsider_cannot_decide_an_agents_eligibility_request(
    agent_api, agent, privileges, outsider
):
    request_id = ask(agent_api).json()["id"]

    response = person_client(outsider).post(
        f"/agents/{agent.pk}/eligibility/requests/{request_id}/decide/",
        {"verdict": "approve"},
    )

    assert response.status_code == 404  # the agent is not theirs to see
    assert EligibilityRequest.objects.get(pk=request_id).status == "pending"


def test_a_denied_eligibility_request_makes_nothing_eligible(agent_api, agent, privileges, sponsor):
    request_id = ask(agent_api).json()["id"]

    response = person_client(sponsor).post(
        f"/agents/{agent.pk}/eligibility/requests/{request_id}/decide/", {"verdict": "deny"}
    )
    again = person_client(sponsor).post(
        f"/agents/{agent.pk}/eligibility/requests/{request_id}/decide/", {"verdict": "approve"}
    )

    assert response.status_code == 302
    assert again.status_code == 409  # decided once
    assert agent_api.get(f"/api/v1/eligibility/requests/{request_id}").json()["status"] == "denied"
    assert not Eligibility.objects.filter(agent=agent).exists()


@pytest.mark.parametrize(
    ("extra", "status", "code"),
    [
        ({"privilege": "nope:never"}, 400, "unknown_privilege"),
        ({"max_duration_seconds": 7200}, 400, "invalid_max_duration"),
        ({"environment": "prod uction"}, 400, "invalid_environment"),
        ({"ends_at": "2020-01-01T00:00:00Z"}, 400, "invalid_end_date"),
        ({"justification": ""}, 400, None),
    ],
)
def test_bad_eligibility_requests_are_refused_in_a_sentence(
    agent_api, privileges, extra, status, code
):
    response = ask(agent_api, **extra)

    assert response.status_code == status
    if code:
        assert response.json()["error"]["code"] == code
    assert not EligibilityRequest.objects.exists()


def test_asking_twice_or_for_what_it_has_is_a_conflict(agent_api, agent, privileges):
    assert ask(agent_api).status_code == 201
    twice = ask(agent_api)
    make_eligible(agent, privileges["read"])
    held = ask(agent_api, privilege="payments-db:read")

    assert (twice.status_code, twice.json()["error"]["code"]) == (
        409,
        "eligibility_request_pending",
    )
    assert (held.status_code, held.json()["error"]["code"]) == (409, "already_eligible")


def test_another_agent_cannot_read_an_eligibility_request(agent_api, privileges, signer):
    request_id = ask(agent_api).json()["id"]
    other = AgentFactory()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(other.spiffe_id)}")

    assert client.get(f"/api/v1/eligibility/requests/{request_id}").status_code == 404


# --- who may grant -------------------------------------------------------------------------------


def test_only_the_sponsor_a_manager_or_an_admin_may_grant(agent, privileges, outsider):
    from guardian.shortcuts import assign_perm

    from core.errors import Forbidden

    with pytest.raises(Forbidden):
        eligibility_grant(agent=agent, privilege=privileges["read"], by=outsider)
    manager = UserFactory(username="manager")
    assign_perm("agents.manage_agent", manager, agent)
    assert eligibility_grant(agent=agent, privilege=privileges["read"], by=manager).pk
    admin = UserFactory(username="root", is_superuser=True)
    assert eligibility_grant(agent=agent, privilege=privileges["refund"], by=admin).pk
    assert AuditEvent.objects.filter(verb="eligibility.granted", actor_id="manager").exists()


def test_a_team_member_who_may_not_approve_cannot_decide(agent_api, agent, privileges, team):
    request_id = ask(agent_api).json()["id"]
    member = UserFactory(username="teammate")
    member.groups.add(team)  # sees the agent, holds no approve right on it

    response = person_client(member).post(
        f"/agents/{agent.pk}/eligibility/requests/{request_id}/decide/", {"verdict": "approve"}
    )

    assert response.status_code == 403
    assert "You may not decide requests for this agent." in response.content.decode()
    assert EligibilityRequest.objects.get(pk=request_id).status == "pending"


# --- the migration path --------------------------------------------------------------------------


def migration_0010():
    return importlib.import_module("approvals.migrations.0010_eligibility")


def test_existing_agents_become_eligible_for_what_they_asked_before(agent, privileges):
    from approvals.models import AccessRequest

    other = AgentFactory()
    for who, privilege in ((agent, "read"), (agent, "read"), (agent, "write"), (other, "refund")):
        AccessRequest.objects.create(
            agent=who,
            privilege=privileges[privilege],
            task_id="before",
            intent={},
            duration_seconds=60,
            decision_deadline=timezone.now(),
            escalation_at=timezone.now(),
        )

    migration_0010().eligible_for_what_was_asked(django_apps, None)

    assert sorted(
        Eligibility.objects.values_list("agent__name", "privilege__action", "granted_by")
    ) == sorted(
        [
            ("Invoice bot", "read", "migration"),
            ("Invoice bot", "write", "migration"),
            (other.name, "refund", "migration"),
        ]
    )


def test_the_eligibility_policies_ship_to_an_untouched_default_policy_only(privileges):
    migration = migration_0010()
    policy = Policy.objects.get(name="default")
    shipped_before = migration.ELIGIBILITY_BLOCK.sub("", DEFAULT_POLICY_TEXT)
    assert "not-eligible" not in shipped_before and "not-eligible" in DEFAULT_POLICY_TEXT
    Policy.objects.filter(pk=policy.pk).update(text=shipped_before)

    migration.ship_eligibility_policies(django_apps, None)

    policy.refresh_from_db()
    assert policy.text == DEFAULT_POLICY_TEXT
    assert PolicyRevision.objects.filter(policy=policy, version=policy.version).exists()
    assert AuditEvent.objects.filter(verb="policy.changed", actor_id="migration").exists()
    edited = "// edited by an admin\n" + shipped_before
    Policy.objects.filter(pk=policy.pk).update(text=edited)
    migration.ship_eligibility_policies(django_apps, None)
    assert Policy.objects.get(pk=policy.pk).text == edited


def test_a_live_grant_ends_at_its_next_token_refresh_once_its_eligibility_is_removed(
    agent_api, agent, privileges, sponsor
):
    eligibility = make_eligible(agent, privileges["read"])
    grant_id = submit(agent_api, "payments-db:read").json()["grant"]["id"]
    assert agent_api.post(f"/api/v1/grants/{grant_id}/token").status_code == 200

    eligibility_remove(eligibility_id=eligibility.pk, agent=agent, by=sponsor)
    refused = agent_api.post(f"/api/v1/grants/{grant_id}/token")

    assert refused.status_code == 409
    assert "Invoice bot is not eligible for payments-db:read" in refused.json()["error"]["message"]
    grant = agent.grants.get(pk=grant_id)
    assert (grant.is_active(), grant.revoke_reason) == (False, "policy")


def test_retiring_an_agent_in_admin_ends_its_eligibility_and_denies_what_it_asked_for(
    agent_api, agent, privileges, admin_user, client
):
    read = make_eligible(agent, privileges["read"])
    asked = ask(agent_api).json()["id"]
    client.force_login(admin_user)

    retired = client.post(
        "/admin/agents/agent/",
        {"action": "retire_agents", "_selected_action": [agent.pk]},
    )

    assert retired.status_code == 302
    read.refresh_from_db()
    assert read.removed_at is not None and read.removed_by == "admin"
    assert not Eligibility.objects.filter(agent=agent, removed_at__isnull=True).exists()
    eligibility_request = EligibilityRequest.objects.get(pk=asked)
    assert (eligibility_request.status, eligibility_request.comment) == (
        "denied",
        "The agent was retired.",
    )
    verbs = list(
        AuditEvent.objects.filter(agent_id=agent.pk)
        .order_by("sequence")
        .values_list("verb", flat=True)
    )
    assert verbs[-3:] == ["agent.retired", "eligibility.removed", "eligibility.request_decided"]
    assert verify_chain().ok
