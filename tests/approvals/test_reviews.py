"""Reviews (recertification) through the public surface: the cadence follows the riskiest
eligibility (granted and removed in the web UI), the sweep (management command and Celery task)
opens one review when due, escalates it and expires it with the overdue action; the sponsor
completes it on its page (only the sponsor or an admin; outsiders get 404). The clock moves by
time-machine. Agents here are eligible only for what a test grants."""

import json
from datetime import timedelta

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from agents.models import Agent
from approvals.models import Eligibility, Review
from approvals.tasks import sweep_reviews
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals.conftest import submit
from tests.factories import AgentFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.eligibility]


def web(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def verbs(agent, prefix="review.") -> list[str]:
    return list(
        AuditEvent.objects.filter(agent_id=agent.pk, verb__startswith=prefix)
        .order_by("sequence")
        .values_list("verb", flat=True)
    )


def make_eligible(agent, privilege) -> Eligibility:
    response = web(agent.sponsor).post(
        f"/agents/{agent.pk}/eligibility/", {"privilege": privilege.pk}
    )
    assert response.status_code == 302, response.content
    return Eligibility.objects.in_force().get(agent=agent, privilege=privilege)


def remove(agent, eligibility):
    response = web(agent.sponsor).post(
        f"/agents/{agent.pk}/eligibility/{eligibility.pk}/remove/", {"reason": "not needed"}
    )
    assert response.status_code == 302, response.content


def sweep() -> str:
    out = []

    class Sink:
        def write(self, text):
            out.append(text)

        def flush(self):
            pass

    call_command("sweep_reviews", stdout=Sink())
    return "".join(out).strip()


def days_from_registration(agent, days):
    return timezone.localdate(agent.created_at) + timedelta(days=days)


def due_review(agent) -> Review:
    """Travel to the agent's due date and let the sweep open its review."""
    with time_machine.travel(
        timezone.now() + (agent.review_due - timezone.localdate()) * 1, tick=False
    ):
        sweep()
    return Review.objects.get(agent=agent, status=Review.Status.OPEN)


def later(days):
    return time_machine.travel(timezone.now() + timedelta(days=days), tick=False)


# --- cadence -----------------------------------------------------------------------------------


def test_an_agent_eligible_for_nothing_is_reviewed_on_the_other_cadence(agent):
    assert agent.review_due == days_from_registration(agent, 180)


def test_the_riskiest_eligibility_sets_the_cadence_as_it_changes(agent, privileges):
    make_eligible(agent, privileges["read"])  # low: still the "other" cadence
    agent.refresh_from_db()
    assert agent.review_due == days_from_registration(agent, 180)

    make_eligible(agent, privileges["write"])  # high
    agent.refresh_from_db()
    assert agent.review_due == days_from_registration(agent, 90)

    critical = make_eligible(agent, privileges["admin"])
    agent.refresh_from_db()
    assert agent.review_due == days_from_registration(agent, 30)

    remove(agent, critical)
    agent.refresh_from_db()
    assert agent.review_due == days_from_registration(agent, 90)
    scheduled = AuditEvent.objects.filter(agent_id=agent.pk, verb="review.scheduled")
    assert [event.data["cadence_days"] for event in scheduled.order_by("sequence")] == [90, 30, 90]
    assert scheduled.order_by("sequence").last().data["why"] == (
        "no longer eligible for prod-cluster:admin"
    )


def test_the_cadence_follows_the_settings(agent, privileges, settings):
    settings.CUSTODY_REVIEW_DAYS_HIGH = 45
    make_eligible(agent, privileges["write"])
    agent.refresh_from_db()
    assert agent.review_due == days_from_registration(agent, 45)


def test_gaining_a_riskier_eligibility_late_makes_the_review_due_now_not_in_the_past(
    agent, privileges
):
    with later(60):
        make_eligible(agent, privileges["admin"])  # 30 days from registration has passed
        agent.refresh_from_db()
        assert agent.review_due == timezone.localdate()


# --- opening -----------------------------------------------------------------------------------


def test_the_sweep_opens_one_review_when_due_and_a_rerun_changes_nothing(agent, privileges):
    make_eligible(agent, privileges["write"])
    agent.refresh_from_db()
    with later(89):
        assert sweep() == "0 expired, 0 escalated, 0 opened."
    with later(90):
        assert sweep() == "0 expired, 0 escalated, 1 opened."
        assert sweep_reviews.apply().get() == {"expired": 0, "escalated": 0, "opened": 0}
    review = Review.objects.get(agent=agent)
    assert review.status == Review.Status.OPEN and review.due == agent.review_due
    assert review.period_start == agent.created_at
    assert verbs(agent).count("review.opened") == 1
    opened = AuditEvent.objects.get(agent_id=agent.pk, verb="review.opened")
    assert opened.data["sponsor"] == "sponsor" and opened.data["review_id"] == review.pk
    assert verify_chain().ok


def test_a_suspended_agent_gets_no_review(agent, privileges, admin_user):
    web(admin_user).post(f"/agents/{agent.pk}/suspend/", {"reason": "incident"})
    agent.refresh_from_db()
    assert agent.status == Agent.Status.SUSPENDED
    with later(181):
        assert sweep() == "0 expired, 0 escalated, 0 opened."


# --- the sponsor's page ------------------------------------------------------------------------


@pytest.fixture
def used_and_unused(agent, agent_api, privileges):
    """Eligible for read (used: a request, its grant, a tool call) and write (never used)."""
    read = make_eligible(agent, privileges["read"])
    write = make_eligible(agent, privileges["write"])
    grant_id = submit(agent_api, "payments-db:read").json()["grant"]["id"]
    called = agent_api.post(
        f"/api/v1/grants/{grant_id}/tool-calls",
        {"tool": "sql.select", "target": "ledger", "outcome": "success"},
        format="json",
    )
    assert called.status_code in (200, 201), called.content
    agent.refresh_from_db()
    return read, write


def test_the_sponsor_sees_each_eligibility_with_its_use_and_unused_ones_marked_for_removal(
    agent, used_and_unused
):
    read, write = used_and_unused
    review = due_review(agent)

    page = web(agent.sponsor).get(f"/reviews/{review.pk}/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "Invoice bot" in html and "payments-platform" in html
    read_row = html.split(f'id="use-{read.pk}"')[1].split("</tr>")[0]
    write_row = html.split(f'id="use-{write.pk}"')[1].split("</tr>")[0]
    # requests, approved, denied, grants, tool calls
    assert "<td>1</td><td>1</td><td>0</td><td>1</td><td>1</td>" in read_row
    assert 'value="keep" checked' in read_row
    assert "<td>never</td>" in write_row and 'value="remove" checked' in write_row
    listed = web(agent.sponsor).get("/").content.decode()
    assert f'href="/reviews/{review.pk}/"' in listed.split('id="reviews-waiting"')[1]


def test_the_page_reads_use_with_one_query_per_kind_not_per_row(
    agent, used_and_unused, privileges, django_assert_max_num_queries
):
    review = due_review(agent)
    client = web(agent.sponsor)
    client.get(f"/reviews/{review.pk}/")  # warm the session
    with django_assert_max_num_queries(16) as counted:
        client.get(f"/reviews/{review.pk}/")
    few = len(counted.captured_queries)
    make_eligible(agent, privileges["refund"])
    make_eligible(agent, privileges["admin"])
    with django_assert_max_num_queries(few):
        client.get(f"/reviews/{review.pk}/")


def test_completing_removes_what_the_sponsor_chose_attests_and_sets_the_next_date(
    agent, used_and_unused
):
    read, write = used_and_unused
    review = due_review(agent)
    with later(95):
        response = web(agent.sponsor).post(
            f"/reviews/{review.pk}/",
            {
                f"decision-{read.pk}": "keep",
                f"decision-{write.pk}": "remove",
                "verdict": "attest",
                "comment": "still reconciles invoices",
            },
        )
        assert response.status_code == 302
        today = timezone.localdate()
    review.refresh_from_db()
    agent.refresh_from_db()
    assert review.status == Review.Status.COMPLETED and review.reviewer == agent.sponsor
    assert review.decisions == {str(read.pk): "keep", str(write.pk): "remove"}
    assert list(Eligibility.objects.in_force().filter(agent=agent)) == [read]
    assert agent.status == Agent.Status.ACTIVE
    assert agent.review_due == today + timedelta(days=180)  # only low risk is left
    completed = AuditEvent.objects.get(agent_id=agent.pk, verb="review.completed")
    assert completed.data["verdict"] == "attest"
    assert completed.data["removed"] == [
        {"eligibility_id": write.pk, "privilege": write.privilege.name}
    ]
    assert completed.data["late"] is True
    assert verbs(agent)[-2:] == ["review.completed", "review.scheduled"]
    assert "eligibility.removed" in verbs(agent, "eligibility.")
    assert verify_chain().ok


@pytest.mark.parametrize(
    ("verdict", "status"), [("suspend", Agent.Status.SUSPENDED), ("retire", Agent.Status.RETIRED)]
)
def test_the_sponsor_may_suspend_or_retire_the_agent_in_the_review(
    agent, used_and_unused, verdict, status
):
    read, write = used_and_unused
    review = due_review(agent)
    response = web(agent.sponsor).post(
        f"/reviews/{review.pk}/",
        {f"decision-{read.pk}": "keep", f"decision-{write.pk}": "keep", "verdict": verdict},
    )
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.status == status
    assert f"agent.{'suspended' if verdict == 'suspend' else 'retired'}" in verbs(agent, "agent.")
    ended = AuditEvent.objects.filter(agent_id=agent.pk, verb__startswith="agent.").last()
    assert ended.data["reason"] == f"review #{review.pk}: {verdict} by sponsor"


def test_the_sponsor_may_hand_the_agent_to_another_sponsor(agent, used_and_unused):
    read, write = used_and_unused
    successor = UserFactory(username="successor")
    review = due_review(agent)
    fields = {f"decision-{read.pk}": "keep", f"decision-{write.pk}": "keep", "verdict": "reassign"}

    nobody = web(agent.sponsor).post(f"/reviews/{review.pk}/", {**fields, "new_sponsor": "ghost"})
    assert nobody.status_code == 400
    assert "There is no active person called &#x27;ghost&#x27;." in nobody.content.decode()

    response = web(agent.sponsor).post(
        f"/reviews/{review.pk}/", {**fields, "new_sponsor": "successor"}
    )
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.sponsor == successor
    assert "agent.sponsor_reassigned" in verbs(agent, "agent.")


def test_only_the_sponsor_or_an_admin_sees_or_completes_a_review(
    agent, used_and_unused, outsider, backup_approver, admin_user
):
    read, write = used_and_unused
    review = due_review(agent)
    answer = {f"decision-{read.pk}": "keep", f"decision-{write.pk}": "keep", "verdict": "attest"}
    for person in (outsider, backup_approver):
        assert web(person).get(f"/reviews/{review.pk}/").status_code == 404
        assert web(person).post(f"/reviews/{review.pk}/", answer).status_code == 404
        assert f"/reviews/{review.pk}/" not in web(person).get("/reviews/").content.decode()
    assert web(outsider).get("/reviews/999999/").status_code == 404
    review.refresh_from_db()
    assert review.status == Review.Status.OPEN
    assert web(admin_user).post(f"/reviews/{review.pk}/", answer).status_code == 302
    review.refresh_from_db()
    assert review.status == Review.Status.COMPLETED and review.reviewer == admin_user


def test_a_review_is_completed_once(agent, used_and_unused):
    read, write = used_and_unused
    review = due_review(agent)
    answer = {f"decision-{read.pk}": "keep", f"decision-{write.pk}": "keep", "verdict": "attest"}
    assert web(agent.sponsor).post(f"/reviews/{review.pk}/", answer).status_code == 302

    again = web(agent.sponsor).post(f"/reviews/{review.pk}/", answer)

    assert again.status_code == 409
    assert "This review of Invoice bot is already completed." in again.content.decode()
    assert verbs(agent).count("review.completed") == 1


@pytest.mark.parametrize(
    ("answer", "sentence"),
    [
        ({"verdict": "attest"}, "Decide keep or remove for every eligibility the agent holds."),
        ({"verdict": "bless"}, "Choose attest, reassign, suspend or retire for the agent."),
        ({"verdict": "attest", "decision-abc": "keep"}, "The form was garbled."),
        ({"verdict": "attest", "decision-999999": "keep"}, "does not hold; reload the review."),
        ({"verdict": "reassign"}, "Reassigning needs the active person who becomes"),
    ],
)
def test_bad_answers_are_told_and_nothing_is_written(agent, used_and_unused, answer, sentence):
    read, write = used_and_unused
    review = due_review(agent)
    if "decision-999999" in answer or answer["verdict"] in ("bless", "reassign"):
        answer = {f"decision-{read.pk}": "keep", f"decision-{write.pk}": "remove", **answer}
    before = AuditEvent.objects.count()

    response = web(agent.sponsor).post(f"/reviews/{review.pk}/", answer)

    assert response.status_code == 400
    assert sentence in response.content.decode()
    review.refresh_from_db()
    assert review.status == Review.Status.OPEN
    assert Eligibility.objects.in_force().filter(agent=agent).count() == 2
    assert AuditEvent.objects.count() == before


# --- escalation and the end of the grace period -----------------------------------------------


def test_an_unanswered_review_escalates_halfway_then_suspends_the_agent_at_the_end(
    agent, used_and_unused, settings
):
    settings.CUSTODY_REVIEW_GRACE_DAYS = 14
    review = due_review(agent)
    due = review.due - timezone.localdate()
    with later(due.days + 6):
        assert sweep() == "0 expired, 0 escalated, 0 opened."
    with later(due.days + 7):
        assert sweep() == "0 expired, 1 escalated, 0 opened."
        assert sweep() == "0 expired, 0 escalated, 0 opened."
        listed = web(agent.sponsor).get("/reviews/").content.decode()
        assert "escalated to payments-platform" in listed
    with later(due.days + 13):
        assert sweep() == "0 expired, 0 escalated, 0 opened."
    with later(due.days + 14):
        assert sweep_reviews.apply().get() == {"expired": 1, "escalated": 0, "opened": 0}
    review.refresh_from_db()
    agent.refresh_from_db()
    assert review.status == Review.Status.EXPIRED
    assert agent.status == Agent.Status.SUSPENDED
    # Suspended, it is due again at once: reactivated, it is reviewed before anything else.
    assert verbs(agent)[-3:] == ["review.escalated", "review.expired", "review.scheduled"]
    expired = AuditEvent.objects.get(agent_id=agent.pk, verb="review.expired")
    assert expired.data["action"] == "suspend"
    suspended = AuditEvent.objects.get(agent_id=agent.pk, verb="agent.suspended")
    assert suspended.data["reason"] == f"review #{review.pk} unanswered 14 days after it was due"
    answer = web(agent.sponsor).post(f"/reviews/{review.pk}/", {"verdict": "attest"})
    assert answer.status_code == 409
    assert verify_chain().ok


def test_the_overdue_action_may_only_record(agent, used_and_unused, settings):
    settings.CUSTODY_REVIEW_OVERDUE_ACTION = "none"
    review = due_review(agent)
    with later((review.due - timezone.localdate()).days + 14):
        assert sweep().startswith("1 expired")
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE
    assert AuditEvent.objects.get(agent_id=agent.pk, verb="review.expired").data["action"] == (
        "none"
    )


# --- campaign evidence -------------------------------------------------------------------------


@pytest.fixture
def campaign(agent, used_and_unused, trust_domain, team, privileges, settings):
    """Two reviews in one period: Invoice bot's completed (write removed), another expired."""
    read, write = used_and_unused
    settings.CUSTODY_REVIEW_GRACE_DAYS = 14
    other = AgentFactory(name="Quiet bot", sponsor=UserFactory(username="quiet-sponsor"), team=team)
    make_eligible(other, privileges["admin"])  # critical: due in 30 days
    other.refresh_from_db()
    with later((other.review_due - timezone.localdate()).days):
        sweep()
    with later((other.review_due - timezone.localdate()).days + 14):
        sweep()
    review = due_review(agent)
    with later((review.due - timezone.localdate()).days):  # answered on the day it is due
        answered = web(agent.sponsor).post(
            f"/reviews/{review.pk}/",
            {f"decision-{read.pk}": "keep", f"decision-{write.pk}": "remove", "verdict": "attest"},
        )
    assert answered.status_code == 302
    return review, Review.objects.get(agent=other)


def test_an_admin_exports_the_campaign_as_csv_json_and_a_printable_report(
    campaign, admin_user, outsider
):
    completed, expired = campaign
    assert expired.opened_at < completed.opened_at  # Quiet bot is due first (critical)
    since = expired.opened_at.date().isoformat()
    until = completed.opened_at.date().isoformat()
    with later((completed.due - timezone.localdate()).days + 1):
        admin = web(admin_user)
        report = admin.get(f"/reviews/evidence/?since={since}&until={until}")
        as_json = admin.get(f"/reviews/evidence/?since={since}&until={until}&format=json")
        as_csv = admin.get(f"/reviews/evidence/?since={since}&until={until}&format=csv")
        refused = web(outsider).get(f"/reviews/evidence/?since={since}&until={until}")
        backwards = admin.get(f"/reviews/evidence/?since={until}&until=2000-01-01")
    assert report.status_code == 200
    html = report.content.decode()
    assert "GOVERN 1.5" in html and "NHI5" in html and "NHI1" in html
    row = html.split(f'id="review-{completed.pk}"')[1].split("</tr>")[0]
    assert "completed: attest (on time)" in row and "payments-db:write" in row
    assert "sponsor / payments-platform" in row
    assert "expired" in html.split(f'id="review-{expired.pk}"')[1].split("</tr>")[0]

    body = as_json.json()
    assert as_json["Content-Disposition"].startswith('attachment; filename="custody-reviews-')
    assert body["summary"]["completed"] == 1 and body["summary"]["expired"] == 1
    assert body["summary"]["eligibility_removed"] == 1 and body["summary"]["on_time"] == 1
    assert {control["id"] for control in body["controls"]} >= {"GOVERN 2.1", "NHI1", "NHI5"}
    (done,) = [row for row in body["reviews"] if row["review_id"] == completed.pk]
    assert done["reviewer"] == "sponsor" and done["removed"] == ["payments-db:write"]
    assert done["kept"] == ["payments-db:read"]

    lines = as_csv.content.decode().splitlines()
    assert lines[0].startswith("review_id,agent_id,agent,spiffe_id,sponsor,team,due")
    assert len(lines) == 3

    assert refused.status_code == 403
    assert "Only admins and auditors read review evidence." in refused.content.decode()
    assert backwards.status_code == 400
    assert backwards.content.decode() == "The period ends before it starts."


def test_the_management_command_writes_the_same_evidence(campaign):
    completed, expired = campaign
    out = []

    class Sink:
        def write(self, text):
            out.append(text)

        def flush(self):
            pass

    call_command(
        "review_evidence",
        since=expired.opened_at.date().isoformat(),
        until=completed.opened_at.date().isoformat(),
        format="json",
        stdout=Sink(),
    )
    body = json.loads("".join(out))
    assert [row["status"] for row in body["reviews"]] == ["expired", "completed"]
    with pytest.raises(CommandError, match="Give the period as two dates"):
        call_command("review_evidence", since="yesterday", until="2026-01-01")


def test_admins_see_reviews_read_only_in_the_admin(agent, used_and_unused, admin_user):
    review = due_review(agent)
    admin = web(admin_user)
    listing = admin.get("/admin/approvals/review/")
    assert listing.status_code == 200
    assert f'href="/reviews/{review.pk}/"' in listing.content.decode()
    assert admin.get("/admin/approvals/review/add/").status_code == 403
