"""Who decides, shown: the eligible approvers by name, who has approved and who is still needed,
why Approve/Deny are not offered, one approval-count rule with its reason, reasons for denials
and critical approvals, and requests that too few people may approve escalated at once."""

import json

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from guardian.shortcuts import assign_perm

from agents.services import backup_approver_add
from approvals.models import AccessRequest, Decision
from audit.models import AuditEvent
from tests.approvals.conftest import person_client
from tests.factories import AgentFactory, UserFactory
from tests.frontend.conftest import approve

HTMX = {"HTTP_HX_REQUEST": "true"}
RULE_TWO = "2 approvals: policy high-risk-two-approvals asks 2; the privilege asks 1"


def text(response) -> str:
    return response.content.decode()


def decide_on_web(client, access_request, verdict="approve", comment="", **extra):
    return client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": verdict, "comment": comment}, **extra
    )


@pytest.fixture
def dave(db, agent):
    """A second backup approver, so that two people besides the sponsor may approve."""
    keeper = UserFactory(username="keeper", is_superuser=True)
    user = UserFactory(username="dave")
    backup_approver_add(agent=agent, user=user, by=keeper)
    return user


# --- the approvers, by name -----------------------------------------------------------------------


def test_the_request_page_names_who_may_approve_and_the_count_with_its_reason(
    web, sponsor, backup_approver, dave, pending
):
    access_request = pending("payments-db:write")

    html = text(web(sponsor).get(f"/requests/{access_request.pk}/"))

    assert "<strong>0 of 2</strong> — waiting for 2 of backup, dave, sponsor" in html
    assert f"{RULE_TWO}." in html
    assert 'action="/requests/' in html


def test_after_one_approval_the_page_says_who_approved_and_who_is_still_needed(
    web, sponsor, backup_approver, dave, pending
):
    access_request = pending("payments-db:write")
    approve(backup_approver, access_request)

    html = text(web(sponsor).get(f"/requests/{access_request.pk}/"))

    assert "<strong>1 of 2</strong> — waiting for dave or sponsor" in html
    assert "Approved by backup." in html


def test_the_inbox_row_shows_the_same_progress(web, sponsor, backup_approver, pending):
    access_request = pending("payments-db:write")
    approve(backup_approver, access_request)

    html = text(web(sponsor).get("/inbox/"))

    assert "<strong>1 of 2</strong> — waiting for sponsor" in html
    assert f'hx-post="/requests/{access_request.pk}/decide/"' in html


def test_a_larger_privilege_count_wins_over_the_policy_and_both_are_shown(
    web, sponsor, backup_approver, dave, pending, privileges
):
    privileges["write"].approvals_required = 3
    privileges["write"].save()
    access_request = pending("payments-db:write")

    assert access_request.approvals_required == 3
    html = text(web(sponsor).get(f"/requests/{access_request.pk}/"))
    assert "3 approvals: the privilege asks 3; policy high-risk-two-approvals asks 2." in html
    assert "waiting for backup, dave and sponsor" in html


# --- Approve/Deny not offered, with the reason ----------------------------------------------------


def test_the_initiator_is_told_why_and_offered_no_buttons(web, sponsor, backup_approver, pending):
    access_request = pending(context={"initiated_by": "sponsor"})
    client = web(sponsor)

    page = text(client.get(f"/requests/{access_request.pk}/"))
    inbox = text(client.get("/inbox/"))

    for html in (page, inbox):
        assert "You initiated this request, so someone else must decide it." in html
        assert f'action="/requests/{access_request.pk}/decide/"' not in html
    assert "Initiated by sponsor, who cannot decide it." in page
    assert "waiting for backup" in page and "waiting for backup or sponsor" not in page


def test_someone_who_decided_is_told_so_and_offered_no_buttons(
    web, sponsor, backup_approver, pending
):
    access_request = pending("payments-db:write")
    approve(backup_approver, access_request)

    html = text(web(backup_approver).get(f"/requests/{access_request.pk}/"))

    assert "You have already decided this request." in html
    assert 'action="/requests/' not in html


def test_someone_without_the_right_is_told_so(web, teammate, pending):
    access_request = pending()

    html = text(web(teammate).get(f"/requests/{access_request.pk}/"))

    assert "You may not decide requests for this agent." in html
    assert 'action="/requests/' not in html


def test_the_shown_approvers_are_exactly_those_the_service_lets_decide(
    sponsor, backup_approver, agent, pending, privileges, teammate
):
    """Eligibility as shown (the people's API) and as enforced (a decision) are one rule: every
    way to hold the right, and every way not to."""
    approver_group = Group.objects.create(name="payments-approvers")
    privileges["write"].approver_group = approver_group
    privileges["write"].save()
    in_approver_group = UserFactory(username="grouped")
    in_approver_group.groups.add(approver_group)
    agent_group = Group.objects.create(name="agent-approvers")
    assign_perm("agents.approve_for_agent", agent_group, agent)
    via_agent_group = UserFactory(username="via-group")
    via_agent_group.groups.add(agent_group)
    inactive = UserFactory(username="inactive", is_active=False)
    inactive.groups.add(approver_group)
    superuser = UserFactory(username="root", is_superuser=True)
    initiator = UserFactory(username="initiator")
    initiator.groups.add(approver_group)
    people = [
        sponsor,
        backup_approver,
        in_approver_group,
        via_agent_group,
        inactive,
        superuser,
        initiator,
        teammate,
    ]
    probe = pending("payments-db:write", context={"initiated_by": "initiator"})
    listing = person_client(sponsor).get("/api/v1/approvals/pending").json()["results"]
    shown = {
        name
        for item in listing
        if item["id"] == probe.pk
        for name in item["progress"]["waiting_for"]
    }

    allowed = set()
    for person in people:
        # Each on a request of their own, so that one approval never ends another's chance.
        access_request = pending("payments-db:write", context={"initiated_by": "initiator"})
        try:
            approve(person, access_request)
            allowed.add(person.get_username())
        except Exception as refusal:  # noqa: BLE001 - refused is the expected other outcome
            assert getattr(refusal, "status_code", 0) in (403, 409)

    assert allowed == {"sponsor", "backup", "grouped", "via-group"}
    assert shown == allowed


# --- reasons and comments ------------------------------------------------------------------------


def test_a_denial_without_a_reason_is_refused_with_a_sentence_and_nothing_written(
    web, sponsor, pending
):
    access_request = pending()
    client = web(sponsor)

    plain = decide_on_web(client, access_request, "deny")
    page = text(client.get(plain["Location"]))
    in_row = decide_on_web(client, access_request, "deny", "   ", **HTMX)
    by_api = person_client(sponsor).post(
        f"/api/v1/requests/{access_request.pk}/decisions", {"verdict": "deny"}, format="json"
    )

    reason = "Give a reason for denying: the agent&#x27;s sponsor and the audit log read it."
    assert plain.status_code == 302
    assert reason in page
    assert in_row.status_code == 400 and reason in text(in_row)
    assert text(in_row).startswith(f'<tr id="request-{access_request.pk}">')
    assert f'hx-post="/requests/{access_request.pk}/decide/"' in text(in_row)  # try again
    assert by_api.status_code == 400
    assert by_api.json()["error"]["code"] == "deny_reason_required"
    assert not access_request.decisions.exists()
    access_request.refresh_from_db()
    assert access_request.status == AccessRequest.Status.PENDING


def test_a_denial_with_its_reason_is_recorded(web, sponsor, pending):
    access_request = pending()

    response = decide_on_web(web(sponsor), access_request, "deny", "Not during the freeze.")

    assert response.status_code == 302
    decision = access_request.decisions.get()
    assert (decision.verdict, decision.comment) == ("deny", "Not during the freeze.")


def test_approving_a_critical_request_needs_a_comment(web, sponsor, backup_approver, pending):
    access_request = pending("prod-cluster:admin")

    bare = decide_on_web(web(sponsor), access_request, "approve", **HTMX)
    by_api = person_client(sponsor).post(
        f"/api/v1/requests/{access_request.pk}/decisions", {"verdict": "approve"}, format="json"
    )
    commented = decide_on_web(web(sponsor), access_request, "approve", "Change 42, checked.")

    assert bare.status_code == 400
    assert "Approving a critical request needs a comment: say what you checked." in text(bare)
    assert by_api.status_code == 400
    assert by_api.json()["error"]["code"] == "approval_comment_required"
    assert commented.status_code == 302
    assert access_request.decisions.get().comment == "Change 42, checked."


def test_a_partial_approval_reads_as_progress_on_the_page(
    web, sponsor, backup_approver, dave, pending
):
    access_request = pending("payments-db:write")
    client = web(sponsor)

    response = decide_on_web(client, access_request, "approve")

    assert "Recorded: 1 of 2, waiting for backup or dave." in text(client.get(response["Location"]))


# --- too few approvers: escalated at once --------------------------------------------------------


def test_a_request_too_few_people_may_approve_is_escalated_when_filed(web, sponsor, pending):
    access_request = pending("payments-db:write")  # two approvals; only the sponsor may approve

    access_request.refresh_from_db()
    assert access_request.escalated_at == access_request.created_at
    event = AuditEvent.objects.get(verb="request.escalated", access_request_id=access_request.pk)
    assert event.data["why"] == "too_few_approvers"
    assert event.data["may_approve"] == ["sponsor"]
    assert event.data["team"] == "payments-platform"
    html = text(web(sponsor).get(f"/requests/{access_request.pk}/"))
    assert (
        "waiting for sponsor and 1 more person who may approve; escalated to team "
        "payments-platform" in html
    )


def test_the_initiator_does_not_count_towards_who_may_approve(sponsor, pending):
    access_request = pending(context={"initiated_by": "sponsor@example.com"})

    assert AuditEvent.objects.filter(
        verb="request.escalated", access_request_id=access_request.pk, data__may_approve=[]
    ).exists()


def test_enough_approvers_means_no_escalation_at_submit(sponsor, backup_approver, pending):
    access_request = pending("payments-db:write")

    access_request.refresh_from_db()
    assert access_request.escalated_at is None
    assert not AuditEvent.objects.filter(verb="request.escalated").exists()


# --- what agents learn ----------------------------------------------------------------------------


def test_an_agent_learns_the_counts_and_the_rule_but_no_names(
    agent_api, sponsor, backup_approver, privileges
):
    body = {
        "privilege": "payments-db:write",
        "task_id": "t-1",
        "duration_seconds": 600,
        "intent": {"action": "pay", "target": "invoice 7", "justification": "due today"},
    }
    request_id = agent_api.post("/api/v1/requests", body, format="json").json()["id"]
    approve(backup_approver, AccessRequest.objects.get(pk=request_id))

    answer = agent_api.get(f"/api/v1/requests/{request_id}")

    data = answer.json()
    assert (data["approvals_required"], data["approvals_received"]) == (2, 1)
    assert data["approvals_rule"] == {
        "privilege_asks": 1,
        "policy_asks": 2,
        "policy": "high-risk-two-approvals",
        "reason": RULE_TWO,
    }
    raw = json.dumps(data)
    assert "sponsor" not in raw.replace("the privilege asks", "") and "backup" not in raw


# --- admin warns --------------------------------------------------------------------------------


def test_admin_shows_the_count_rule_and_warns_when_it_cannot_be_met(
    admin_user, agent, sponsor, privileges
):
    client = Client()
    client.force_login(admin_user)

    listing = text(client.get("/admin/approvals/privilege/"))
    privilege_page = text(
        client.get(f"/admin/approvals/privilege/{privileges['write'].pk}/change/")
    )
    agent_page = text(client.get(f"/admin/agents/agent/{agent.pk}/change/"))

    assert "2: policy high-risk-two-approvals asks 2; the privilege asks 1" in listing
    warning = "Invoice bot: payments-db:write needs 2 approvals, only 1 person may approve"
    assert warning in listing and warning in privilege_page
    assert "Invoice bot: prod-cluster:admin needs 2 approvals" in agent_page
    assert "Cannot be met: " in agent_page


def test_admin_has_nothing_to_warn_of_when_enough_people_may_approve(
    admin_user, agent, sponsor, backup_approver, privileges
):
    client = Client()
    client.force_login(admin_user)

    assert "cannot be met" not in text(client.get("/admin/approvals/privilege/"))
    agent_page = text(client.get(f"/admin/agents/agent/{agent.pk}/change/"))
    assert "Every privilege&#x27;s approval count can be met." in agent_page


def test_the_inbox_stays_a_fixed_number_of_queries_with_approvers_by_name(
    web, sponsor, team, backup_approver, pending
):
    client = web(sponsor)
    pending("payments-db:write")
    client.get("/inbox/")
    with CaptureQueriesContext(connection) as few:
        client.get("/inbox/")
    keeper = UserFactory(username="keeper2", is_superuser=True)
    for n in range(4):
        helper = AgentFactory(sponsor=sponsor, team=team)
        backup_approver_add(agent=helper, user=UserFactory(username=f"extra{n}"), by=keeper)
        pending("payments-db:write", for_agent=helper)
        approve(backup_approver, pending("payments-db:write"))
    with CaptureQueriesContext(connection) as many:
        html = text(client.get("/inbox/"))

    assert html.count("waiting for") >= 9
    assert len(many) == len(few)
    assert Decision.objects.count() == 4
