"""Every `make demo-request KIND=…` can be finished with the demo logins `make run` prints.

Each test loads the demo data, runs `demo_request` against the live server (the agent's side goes
over HTTP with a development JWT-SVID, as `make demo-request` does) and then finishes the flow
in the web app, signed in through the login page with the demo passwords."""

import io
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from agents.models import Agent
from approvals.demo import DEMO_PASSWORDS
from approvals.models import AccessRequest, Grant, Policy, PolicySetState
from approvals.policy import DEFAULT_POLICY_TEXT
from core.sessions import SESSION_KEY

ROOT = Path(__file__).resolve().parents[2]
# The demo carries its own eligibility (load_demo seeds it): no test default here.
pytestmark = pytest.mark.eligibility


@pytest.fixture
def demo(settings, tmp_path, live_server):
    settings.DEBUG = True  # the development trust domain and load_demo refuse to run without
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev_trust_domain_key.pem"
    # A transactional test's flush empties every table, the shipped policy set included.
    Policy.objects.get_or_create(name="default", defaults={"text": DEFAULT_POLICY_TEXT})
    PolicySetState.objects.get_or_create(id=1)
    call_command("load_demo", stdout=io.StringIO())

    def ask(*args) -> tuple[str, list[int]]:
        out = io.StringIO()
        call_command("demo_request", "--url", live_server.url, "--json", *args, stdout=out)
        text = out.getvalue()
        return text, [int(n) for n in re.findall(r"Request #(\d+)", text)]

    return ask


def signed_in(username: str) -> Client:
    """A person signed in through the login page with the demo password (a fresh sign-in)."""
    client = Client()
    response = client.post("/login/", {"username": username, "password": DEMO_PASSWORDS[username]})
    assert response.status_code == 302, f"{username} could not sign in"
    return client


def decide(username: str, request_id: int, verdict="approve", comment="Checked, fine.") -> Client:
    client = signed_in(username)
    response = client.post(
        f"/requests/{request_id}/decide/", {"verdict": verdict, "comment": comment}
    )
    assert response.status_code in (200, 302), response.content[:500]
    return client


def try_to_decide(username: str, request_id: int) -> None:
    """A decision the web app refuses: it says so (a message, 403 or 404) and records nothing."""
    response = signed_in(username).post(
        f"/requests/{request_id}/decide/", {"verdict": "approve", "comment": "Me too."}
    )
    assert response.status_code in (302, 400, 403, 404, 409)


def status_of(request_id: int) -> str:
    return AccessRequest.objects.get(pk=request_id).status


def test_auto_is_granted_at_once_and_its_sponsor_sees_the_grant(demo):
    output, (request_id,) = demo("--kind", "auto")
    assert "granted at once by policy" in output
    grant = Grant.objects.get(access_request_id=request_id)
    assert grant.is_active() and grant.scope == "payments-db:read"
    page = signed_in("alice").get("/grants/")
    assert f'id="grant-{grant.pk}"' in page.content.decode()


def test_one_is_finished_by_one_person_who_did_not_initiate_it(demo):
    output, (request_id,) = demo("--kind", "one")
    assert "waits for 1 approval" in output
    assert "alice / custody-alice" in output
    assert "bob initiated it, so may not approve it." in output
    try_to_decide("bob", request_id)  # the initiator: refused, nothing recorded
    assert status_of(request_id) == "pending"
    page = decide("alice", request_id).get(f"/requests/{request_id}/")
    assert page.status_code == 200
    assert status_of(request_id) == "approved"
    assert Grant.objects.get(access_request_id=request_id).is_active()


def test_two_needs_two_people_neither_of_them_the_initiator(demo):
    output, (request_id,) = demo("--kind", "two")
    assert "waits for 2 approvals" in output
    assert "bob / custody-bob" in output and "dave / custody-dave" in output
    assert "alice initiated it" in output
    try_to_decide("alice", request_id)  # she initiated it: refused
    decide("bob", request_id)
    access_request = AccessRequest.objects.get(pk=request_id)
    assert access_request.status == "pending"
    assert access_request.approvals_received() == 1
    inbox = signed_in("dave").get("/inbox/").content.decode()
    assert f"request-{request_id}" in inbox  # dave approves through his approver group
    decide("dave", request_id)
    assert status_of(request_id) == "approved"
    grant = Grant.objects.get(access_request_id=request_id)
    assert grant.is_active() and grant.scope == "payments-db:write"


def test_critical_is_finished_by_two_people_each_signed_in_freshly_with_a_comment(demo):
    output, (request_id,) = demo("--kind", "critical")
    assert "waits for 2 approvals" in output
    assert "erin / custody-erin" in output and "dave / custody-dave" in output
    assert "fresh sign-in" in output or "signs in again" in output
    # erin signed in eleven minutes ago: approving sends her to the step-up page first.
    erin = signed_in("erin")
    session = erin.session
    session[SESSION_KEY] = (timezone.now() - timedelta(minutes=11)).isoformat()
    session.save()
    comment = "Certificates expire Tuesday; rotation planned."
    answer = erin.post(
        f"/requests/{request_id}/decide/", {"verdict": "approve", "comment": comment}
    )
    assert answer.status_code == 302 and answer["Location"].startswith("/step-up/")
    assert not AccessRequest.objects.get(pk=request_id).decisions.exists()
    confirmed = erin.post(answer["Location"], {"password": DEMO_PASSWORDS["erin"]})
    assert confirmed.status_code == 302
    assert status_of(request_id) == "pending"
    assert AccessRequest.objects.get(pk=request_id).approvals_received() == 1
    decide("dave", request_id, comment="Change CHG-1042 reviewed.")
    assert status_of(request_id) == "approved"
    grant = Grant.objects.get(access_request_id=request_id)
    assert grant.is_active() and grant.scope == "prod-cluster:admin"
    assert {d.comment for d in grant.access_request.decisions.all()} == {
        "Certificates expire Tuesday; rotation planned.",
        "Change CHG-1042 reviewed.",
    }


def test_delegation_to_another_sponsors_agent_is_finished_by_that_sponsor(demo):
    output, (parent_request_id, child_request_id) = demo("--kind", "delegation")
    parent = Grant.objects.get(access_request_id=parent_request_id)
    assert parent.is_active()
    assert "carol / custody-carol" in output
    child = AccessRequest.objects.get(pk=child_request_id)
    assert child.parent_grant_id == parent.pk and child.status == "pending"
    assert child.agent.spiffe_id.endswith("/agents/research-agent")
    try_to_decide("alice", child_request_id)  # not the research agent's approver
    assert status_of(child_request_id) == "pending"
    decide("carol", child_request_id)
    assert status_of(child_request_id) == "approved"
    delegated = Grant.objects.get(access_request_id=child_request_id)
    assert delegated.parent_id == parent.pk and delegated.is_active()
    assert delegated.expires_at <= parent.expires_at


def test_a_privilege_and_duration_of_ones_own_and_no_initiator(demo):
    output, (request_id,) = demo("--privilege", "crm:read", "--duration", "30m")
    assert "for 30 min" in output and "no person initiated it" in output
    access_request = AccessRequest.objects.get(pk=request_id)
    assert access_request.duration_seconds == 1800
    assert access_request.initiated_by == ""
    assert access_request.status == "pending"  # a low-risk read, but longer than 15 min
    assert "alice / custody-alice" in output and "bob / custody-bob" in output


def test_the_demo_agents_are_eligible_for_their_presets_and_nothing_else(demo):
    output, (request_id,) = demo("--privilege", "prod-cluster:admin", "--duration", "10m")
    access_request = AccessRequest.objects.get(pk=request_id)
    assert access_request.status == "denied"
    assert access_request.policy_reason.startswith(
        "Invoice bot is not eligible for prod-cluster:admin"
    )
    invoice_bot = Agent.objects.get(spiffe_id__endswith="/agents/invoice-bot")
    page = signed_in("alice").get(f"/agents/{invoice_bot.pk}/").content.decode()
    assert "payments-db:write" in page and "crm:read" in page


def test_bad_kinds_and_durations_are_refused_with_a_sentence(demo):
    with pytest.raises(CommandError, match="KIND='three' is not a demo"):
        demo("--kind", "three")
    with pytest.raises(CommandError, match="DURATION='soon' is not a duration"):
        demo("--duration", "soon")
    with pytest.raises(CommandError, match="at most 3600 seconds"):
        demo("--privilege", "crm:read", "--duration", "2h")
    assert not AccessRequest.objects.exists()


def test_load_demo_twice_changes_nothing_the_second_time(demo):
    from audit.models import AuditEvent

    events = AuditEvent.objects.count()
    call_command("load_demo", stdout=io.StringIO())
    assert AuditEvent.objects.count() == events
    invoice_bot = Agent.objects.get(spiffe_id__endswith="/agents/invoice-bot")
    assert list(invoice_bot.backup_approvers.values_list("user__username", flat=True)) == ["bob"]


def test_make_passes_the_preset_and_overrides_to_the_command():
    dry_run = subprocess.run(
        ["make", "-n", "demo-request", "KIND=two", "PRIVILEGE=crm:read", "DURATION=20m"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    command = " ".join(dry_run.split())
    assert '--kind "two"' in command
    assert '--privilege "crm:read"' in command
    assert '--duration "20m"' in command
