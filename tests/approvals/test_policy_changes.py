"""Policy changes with a safety net, through admin HTTP and the agent API: a change is shown
(what it would have decided on the latest requests, which live grants it would end, whether it
grants high or critical privileges automatically) before it is kept; Cedar's errors say where;
under the two-person rule another admin applies it; once live, the grants it no longer permits
end (reason policy_changed) with everything delegated from them."""

import re

import pytest

from approvals.models import AccessRequest, Grant, Policy, PolicyProposal
from audit.models import AuditEvent
from tests.approvals.conftest import submit
from tests.approvals.test_delegation import client_for, exchange, root_token
from tests.factories import AgentFactory, UserFactory

pytestmark = pytest.mark.django_db

FORBID_READS = """// Quarter close.
@id("freeze-payments-reads")
@reason("Payments are frozen for the quarter close.")
forbid (principal, action, resource)
when { resource.resource == "payments-db" && resource.action == "read" };
"""

AUTO_WRITES = """
@id("writes-automatic")
@reason("Writes are granted at once.")
permit (principal, action == Action::"auto_approve", resource)
when { resource.action == "write" };
"""

REVIEWED = re.compile(r'name="reviewed" value="([0-9a-f]+)"')


def policy_form(**fields):
    return {
        "name": "quarter-close",
        "description": "",
        "text": FORBID_READS,
        "enabled": "on",
        "revisions-TOTAL_FORMS": "0",
        "revisions-INITIAL_FORMS": "0",
        **fields,
    }


def preview(client, url, data):
    """The first save of a change shows what it would do and keeps nothing."""
    response = client.post(url, data)
    assert response.status_code == 200, response.content.decode()[:2000]
    page = response.content.decode()
    assert "What this change would have decided" in page
    return page, REVIEWED.search(page).group(1)


def save_reviewed(client, url, data, capture):
    page, reviewed = preview(client, url, data)
    with capture(execute=True):  # the re-evaluation runs once the change has committed
        response = client.post(url, {**data, "reviewed": reviewed})
    assert response.status_code == 302, response.content.decode()[:3000]
    return page


def test_it_shows_what_a_change_would_decide_and_ends_the_grants_it_no_longer_permits(
    agent_api, privileges, client, admin_user, django_capture_on_commit_callbacks
):
    read = submit(agent_api, task_id="reconcile").json()
    assert read["status"] == "approved"
    write = submit(agent_api, "payments-db:write", task_id="fix").json()
    assert write["status"] == "pending"
    client.force_login(admin_user)

    page, _ = preview(client, "/admin/approvals/policy/add/", policy_form())
    assert not Policy.objects.filter(name="quarter-close").exists()
    assert "Nothing is saved yet" in page
    counts = re.sub(r"\s+", " ", page.split('class="simulation-counts"')[1].split("</table>")[0])
    assert '<th scope="row">Approved by policy</th><td>1</td><td>1</td><td>0</td>' in counts
    assert '<th scope="row">Routed to people</th><td>1</td><td>1</td><td>1</td>' in counts
    assert '<th scope="row">Denied by policy</th><td>0</td><td>0</td><td>1</td>' in counts
    assert "Requests this change decides differently: 1" in page
    assert f'href="/admin/approvals/accessrequest/{read["id"]}/change/"' in page
    assert f'href="/admin/approvals/accessrequest/{write["id"]}/change/"' not in page
    assert "Live grants this change would end: 1" in page
    assert f"Grant #{read['grant']['id']}" in page
    assert "High and critical privileges granted automatically: 0" in page
    assert "What is approximated" in page
    assert Grant.objects.get(pk=read["grant"]["id"]).revoked_at is None

    save_reviewed(
        client, "/admin/approvals/policy/add/", policy_form(), django_capture_on_commit_callbacks
    )
    grant = Grant.objects.get(pk=read["grant"]["id"])
    assert grant.revoke_reason == "policy_changed"
    revoked = AuditEvent.objects.get(verb="grant.revoked", grant_id=grant.pk)
    assert revoked.data["reason"] == "policy_changed"
    assert "frozen for the quarter close" in revoked.data["detail"]
    assert AuditEvent.objects.get(verb="policy.grants_reevaluated").data["ended"] == [grant.pk]
    # The agent hears it at its next refresh, and its next request is denied.
    refused = agent_api.post(f"/api/v1/grants/{grant.pk}/token")
    assert refused.status_code == 409
    assert submit(agent_api, task_id="again").json()["status"] == "denied"


def test_a_change_that_is_edited_after_its_preview_is_shown_again(
    agent_api, privileges, client, admin_user
):
    client.force_login(admin_user)
    _, reviewed = preview(client, "/admin/approvals/policy/add/", policy_form())
    other = FORBID_READS.replace('"read"', '"write"')
    response = client.post(
        "/admin/approvals/policy/add/", policy_form(text=other, reviewed=reviewed)
    )
    assert response.status_code == 200
    assert "What this change would have decided" in response.content.decode()
    assert not Policy.objects.filter(name="quarter-close").exists()


def test_disabling_a_policy_ends_the_grants_only_it_permitted(
    agent_api, privileges, client, admin_user, django_capture_on_commit_callbacks
):
    granted = submit(agent_api, task_id="reconcile").json()
    default = Policy.objects.get(name="default")
    client.force_login(admin_user)
    url = f"/admin/approvals/policy/{default.pk}/change/"
    data = {
        "name": "default",
        "description": default.description,
        "text": default.text,
        # "enabled" left out: the box is unticked
        "revisions-TOTAL_FORMS": "0",
        "revisions-INITIAL_FORMS": "0",
    }
    page = save_reviewed(client, url, data, django_capture_on_commit_callbacks)
    assert "Live grants this change would end: 1" in page
    grant = Grant.objects.get(pk=granted["grant"]["id"])
    assert grant.revoke_reason == "policy_changed"
    assert submit(agent_api, task_id="after").json()["status"] == "denied"


def test_deleting_a_policy_shows_what_it_would_change_then_ends_what_it_alone_permitted(
    agent_api, privileges, client, admin_user, django_capture_on_commit_callbacks
):
    granted = submit(agent_api, task_id="reconcile").json()
    default = Policy.objects.get(name="default")
    client.force_login(admin_user)
    url = f"/admin/approvals/policy/{default.pk}/delete/"
    page = client.get(url).content.decode()
    assert "What this change would have decided" in page
    assert "Live grants this change would end: 1" in page
    assert Grant.objects.get(pk=granted["grant"]["id"]).revoked_at is None
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(url, {"post": "yes"}).status_code == 302
    assert not Policy.objects.filter(pk=default.pk).exists()
    assert Grant.objects.get(pk=granted["grant"]["id"]).revoke_reason == "policy_changed"
    assert AuditEvent.objects.filter(verb="policy.deleted").exists()


def test_a_grant_the_change_ends_takes_everything_delegated_from_it(
    agent,
    agent_api,
    signer,
    sponsor,
    team,
    privileges,
    client,
    admin_user,
    django_capture_on_commit_callbacks,
):
    # A -> B -> C, one sponsor's agents, delegated through the token exchange.
    helper_b, helper_c = (
        AgentFactory(spiffe_id=f"spiffe://example.test/agents/{name}", sponsor=sponsor, team=team)
        for name in ("ledger-reader", "row-fetcher")
    )
    token_a, grant_a = root_token(agent_api)
    response_b = exchange(agent_api, token_a, signer.act(helper_b.spiffe_id), duration_seconds=300)
    assert response_b.status_code == 200, response_b.content
    response_c = exchange(
        client_for(signer, helper_b),
        response_b.json()["access_token"],
        signer.act(helper_c.spiffe_id),
    )
    assert response_c.status_code == 200, response_c.content
    grant_b = Grant.objects.get(pk=response_b.json()["grant_id"])
    grant_c = Grant.objects.get(pk=response_c.json()["grant_id"])
    only_a = f"""
@id("invoice-bot-off-payments")
@reason("The invoice bot is off payments.")
forbid (principal, action, resource)
when {{ principal == Agent::"{agent.spiffe_id}" && resource.resource == "payments-db" }};
"""
    client.force_login(admin_user)
    save_reviewed(
        client,
        "/admin/approvals/policy/add/",
        policy_form(name="bot-off", text=only_a),
        django_capture_on_commit_callbacks,
    )
    reasons = {
        grant.pk: grant.revoke_reason
        for grant in Grant.objects.filter(pk__in=[grant_a.pk, grant_b.pk, grant_c.pk])
    }
    assert reasons == {grant_a.pk: "policy_changed", grant_b.pk: "cascade", grant_c.pk: "cascade"}
    cascades = AuditEvent.objects.filter(verb="grant.revoked", data__reason="cascade")
    assert cascades.count() == 2


def test_cedar_errors_say_the_line_the_column_and_the_policy(client, admin_user):
    client.force_login(admin_user)
    text = (
        '@id("ok")\n'
        'permit (principal, action == Action::"request", resource);\n'
        "\n"
        '@id("red-things")\n'
        "permit (principal, action, resource)\n"
        '  when { resource.colour == "red" };\n'
    )
    response = client.post("/admin/approvals/policy/add/", policy_form(name="broken", text=text))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Cedar says: line 6, column 19 (policy 2, @id(&quot;red-things&quot;))" in page
    assert "attribute `colour` on entity type `Privilege` not found" in page
    assert "What this change would have decided" not in page
    syntax = client.post(
        "/admin/approvals/policy/add/",
        policy_form(
            name="broken", text=text.replace('resource.colour == "red"', "resource.risk ==")
        ),
    )
    assert (
        "Cedar says: line 6, column 27 (policy 2, @id(&quot;red-things&quot;)): unexpected token"
        in (syntax.content.decode())
    )
    assert not Policy.objects.filter(name="broken").exists()


def test_it_warns_when_a_policy_grants_a_high_risk_privilege_automatically(
    agent, privileges, client, admin_user
):
    client.force_login(admin_user)
    page, _ = preview(
        client, "/admin/approvals/policy/add/", policy_form(name="fast-writes", text=AUTO_WRITES)
    )
    assert "High and critical privileges granted automatically: 1" in page
    assert (
        "Warning: payments-db:write (high risk) would be granted automatically, by "
        "writes-automatic" in page
    )
    # The critical one stays people's: the shipped set forbids it automatically.
    assert "prod-cluster:admin" not in page.split("granted automatically: 1")[1].split("</ul>")[0]


# --- the two-person rule --------------------------------------------------------------------


@pytest.fixture
def two_person(settings):
    settings.CUSTODY_POLICY_TWO_PERSON = True


@pytest.fixture
def second_admin(db):
    return UserFactory(username="admin-two", is_staff=True, is_superuser=True)


def propose(client, **fields):
    data = {
        "policy": "",
        "name": "quarter-close",
        "description": "",
        "text": FORBID_READS,
        "enabled": "on",
        **fields,
    }
    _, reviewed = preview(client, "/admin/approvals/policyproposal/add/", data)
    response = client.post("/admin/approvals/policyproposal/add/", {**data, "reviewed": reviewed})
    assert response.status_code == 302, response.content.decode()[:3000]
    return PolicyProposal.objects.latest("pk")


def test_under_the_two_person_rule_a_change_waits_for_another_admin(
    two_person,
    agent_api,
    privileges,
    client,
    admin_user,
    second_admin,
    django_capture_on_commit_callbacks,
):
    granted = submit(agent_api, task_id="reconcile").json()
    client.force_login(admin_user)
    assert client.get("/admin/approvals/policy/add/").status_code == 403
    default = Policy.objects.get(name="default")
    read_only = client.get(f"/admin/approvals/policy/{default.pk}/change/").content.decode()
    assert f'href="/admin/approvals/policyproposal/add/?policy={default.pk}"' in read_only
    prefilled = client.get(f"/admin/approvals/policyproposal/add/?policy={default.pk}")
    assert "active-agents-may-request" in prefilled.content.decode()
    proposal = propose(client)
    assert proposal.status == "proposed"
    assert "quarter-close" in client.get("/admin/approvals/policyproposal/").content.decode()
    assert not Policy.objects.filter(name="quarter-close").exists()
    assert submit(agent_api, task_id="still-open").json()["status"] == "approved"
    assert AuditEvent.objects.get(verb="policy.proposed").actor_id == "admin"

    page = client.get(f"/admin/approvals/policyproposal/{proposal.pk}/change/").content.decode()
    assert "What this change would have decided" in page
    assert "another admin must apply it" in page
    assert 'name="apply"' not in page
    own = client.post(f"/admin/approvals/policyproposal/{proposal.pk}/decide/", {"apply": "1"})
    assert own.status_code == 403
    assert "another admin must apply it" in own.content.decode()
    assert not Policy.objects.filter(name="quarter-close").exists()

    client.force_login(second_admin)
    page = client.get(f"/admin/approvals/policyproposal/{proposal.pk}/change/").content.decode()
    assert 'name="apply"' in page
    with django_capture_on_commit_callbacks(execute=True):
        applied = client.post(
            f"/admin/approvals/policyproposal/{proposal.pk}/decide/", {"apply": "1"}
        )
    assert applied.status_code == 302
    proposal.refresh_from_db()
    assert (proposal.status, proposal.decided_by) == ("applied", second_admin)
    assert Policy.objects.get(name="quarter-close").version == 1
    event = AuditEvent.objects.get(verb="policy.applied")
    assert (event.actor_id, event.data["proposed_by"]) == ("admin-two", "admin")
    assert Grant.objects.get(pk=granted["grant"]["id"]).revoke_reason == "policy_changed"
    assert submit(agent_api, task_id="closed").json()["status"] == "denied"
    again = client.post(f"/admin/approvals/policyproposal/{proposal.pk}/decide/", {"apply": "1"})
    assert again.status_code == 409


def test_a_proposal_is_rejected_with_a_reason_and_then_cannot_be_applied(
    two_person, privileges, client, admin_user, second_admin
):
    client.force_login(admin_user)
    proposal = propose(client)
    client.force_login(second_admin)
    url = f"/admin/approvals/policyproposal/{proposal.pk}/decide/"
    no_reason = client.post(url, {"reject": "1", "reason": ""})
    assert no_reason.status_code == 400
    assert "Say why" in no_reason.content.decode()
    assert client.post(url, {"reject": "1", "reason": "Not this quarter."}).status_code == 302
    proposal.refresh_from_db()
    assert (proposal.status, proposal.reason) == ("rejected", "Not this quarter.")
    assert AuditEvent.objects.get(verb="policy.rejected").data["reason"] == "Not this quarter."
    assert client.post(url, {"apply": "1"}).status_code == 409
    assert not Policy.objects.filter(name="quarter-close").exists()


def test_a_proposal_against_a_version_that_moved_is_refused(
    two_person, privileges, client, admin_user, second_admin, settings
):
    default = Policy.objects.get(name="default")
    client.force_login(admin_user)
    proposal = propose(
        client, policy=str(default.pk), name="default", text=default.text + "\n// earlier"
    )
    assert proposal.base_version == default.version
    later = propose(
        client, policy=str(default.pk), name="default", text=default.text + "\n// later"
    )
    client.force_login(second_admin)
    assert (
        client.post(
            f"/admin/approvals/policyproposal/{later.pk}/decide/", {"apply": "1"}
        ).status_code
        == 302
    )
    stale = client.post(f"/admin/approvals/policyproposal/{proposal.pk}/decide/", {"apply": "1"})
    assert stale.status_code == 409
    assert "propose the change again" in stale.content.decode()
    assert Policy.objects.get(name="default").text.endswith("// later")
    assert AccessRequest.objects.count() == 0
