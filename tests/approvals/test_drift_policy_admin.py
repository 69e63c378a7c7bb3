"""The drift policy is a Policy of kind `drift`, edited in Django admin like the request
policies: validated against its own schema on save (refused with Cedar's words, nothing
written), versioned, audited, under the two-person rule through proposals, and seen by the very
next tool call. Through admin HTTP and the agent API."""

import pytest

from approvals.models import Grant, Policy, PolicyProposal, PolicyRevision
from approvals.policy import DRIFT_DEFAULT_TEXT
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.approvals.test_drift import END_ON_TARGET, call, granted
from tests.approvals.test_policy_changes import second_admin, two_person  # noqa: F401
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

# Valid for requests, not for tool calls: the drift schema has no `context.intent`.
REQUEST_ONLY = """
@id("intent-words")
@drift("flag")
permit (principal, action == Action::"tool_call", resource)
when { context.intent.target == "payroll" };
"""


def drift_form(**fields):
    return {
        "name": "drift-default",
        "description": "",
        "text": END_ON_TARGET,
        "enabled": "on",
        "revisions-TOTAL_FORMS": "0",
        "revisions-INITIAL_FORMS": "0",
        **fields,
    }


def change_url(policy: Policy) -> str:
    return f"/admin/approvals/policy/{policy.pk}/change/"


def test_migration_ships_the_default_drift_policy(db):
    shipped = Policy.objects.get(name="drift-default")
    assert (shipped.kind, shipped.enabled, shipped.version) == ("drift", True, 1)
    assert shipped.text == DRIFT_DEFAULT_TEXT
    assert PolicyRevision.objects.get(policy=shipped).created_by == "migration"


def test_an_admin_change_is_seen_at_the_very_next_tool_call(
    agent_api, privileges, client, admin_user
):
    grant_id = granted(agent_api)
    # The shipped policy is compiled and cached by this call: it flags.
    assert call(agent_api, grant_id, target="payroll").json()["drift"]["outcome"] == "flag"
    drift = Policy.objects.get(name="drift-default")
    client.force_login(admin_user)
    page = client.get(change_url(drift)).content.decode()
    assert "drift-flags" in page and "Drift (tool_call)" in page

    # No request simulation for a drift policy: the first save keeps it.
    saved = client.post(change_url(drift), drift_form())
    assert saved.status_code == 302, saved.content.decode()[:3000]
    drift.refresh_from_db()
    assert (drift.kind, drift.version, drift.text) == ("drift", 2, END_ON_TARGET.strip())
    assert PolicyRevision.objects.filter(policy=drift, version=2, created_by="admin").exists()
    event = AuditEvent.objects.get(verb="policy.changed")
    assert event.data["policy"] == "drift-default" and event.data["kind"] == "drift"
    assert event.data["version"] == 2 and event.data["text"] == END_ON_TARGET.strip()
    assert Grant.objects.get(pk=grant_id).is_active()  # no re-evaluation of grants

    ended = call(agent_api, grant_id, target="payroll").json()["drift"]
    assert ended["outcome"] == "end"
    assert Grant.objects.get(pk=grant_id).revoke_reason == "drift"
    assert verify_chain().ok


@pytest.mark.parametrize(
    "text, says",  # the form strips the text: its first line is `@id`
    [
        (
            REQUEST_ONLY,
            'line 4, column 16 (policy 1, @id("intent-words")): attribute `intent` in context '
            'for Action::"tool_call" not found',
        ),
        (
            'permit (principal, action == Action::"request", resource);',
            'line 1, column 30 (policy 1, no @id): unrecognized action `Action::"request"`',
        ),
        (
            "permit (principal, action, resource) when { context.drifted ==",
            "line 1, column 63 (policy 1, no @id): unexpected end of input",
        ),
    ],
)
def test_a_drift_policy_that_does_not_validate_is_refused_and_nothing_changes(
    agent_api, privileges, client, admin_user, text, says
):
    grant_id = granted(agent_api)
    drift = Policy.objects.get(name="drift-default")
    client.force_login(admin_user)
    refused = client.post(change_url(drift), drift_form(text=text))
    assert refused.status_code == 200
    page = refused.content.decode()
    assert "Cedar says: " + says.replace('"', "&quot;") in page
    drift.refresh_from_db()
    assert (drift.version, drift.text) == (1, DRIFT_DEFAULT_TEXT)
    assert PolicyRevision.objects.filter(policy=drift).count() == 1
    assert not AuditEvent.objects.filter(
        verb__in=["policy.changed", "policy.created", "policy.proposed"]
    ).exists()
    assert call(agent_api, grant_id, target="payroll").json()["drift"]["outcome"] == "flag"


def test_a_new_drift_policy_is_validated_for_its_kind_and_joins_the_drift_set(
    agent_api, privileges, client, admin_user
):
    grant_id = granted(agent_api)
    client.force_login(admin_user)
    new = drift_form(name="end-on-target", kind="drift")
    # The same text as a request policy does not validate: tool_call is not a request action.
    as_request = client.post("/admin/approvals/policy/add/", {**new, "kind": "request"})
    assert as_request.status_code == 200
    assert "Cedar says:" in as_request.content.decode()
    assert not Policy.objects.filter(name="end-on-target").exists()

    assert client.post("/admin/approvals/policy/add/", new).status_code == 302
    created = AuditEvent.objects.get(verb="policy.created")
    assert created.data["kind"] == "drift" and created.data["policy"] == "end-on-target"
    answer = call(agent_api, grant_id, target="payroll").json()["drift"]
    assert answer["outcome"] == "end"
    assert sorted(answer["policies"]) == ["any-drift-flags", "drift-flags", "wrong-target-ends"]
    listing = client.get("/admin/approvals/policy/?kind__exact=drift").content.decode()
    assert "end-on-target" in listing and "drift-default" in listing
    assert ">default<" not in listing


def test_a_policys_kind_is_fixed_once_it_exists(privileges, client, admin_user):
    drift = Policy.objects.get(name="drift-default")
    client.force_login(admin_user)
    # kind is read-only on the change form: a posted kind is ignored, the text still validated
    # as drift.
    saved = client.post(change_url(drift), drift_form(kind="request"))
    assert saved.status_code == 302
    drift.refresh_from_db()
    assert (drift.kind, drift.version) == ("drift", 2)


def test_deleting_the_drift_policy_is_audited_and_calls_are_then_only_recorded(
    agent_api, privileges, client, admin_user
):
    grant_id = granted(agent_api)
    drift = Policy.objects.get(name="drift-default")
    client.force_login(admin_user)
    confirm = client.get(f"/admin/approvals/policy/{drift.pk}/delete/")
    assert confirm.status_code == 200
    assert "What this change would have decided" not in confirm.content.decode()
    deleted = client.post(f"/admin/approvals/policy/{drift.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    event = AuditEvent.objects.get(verb="policy.deleted")
    assert event.data == {"policy": "drift-default", "kind": "drift", "version": 1}
    assert call(agent_api, grant_id, target="payroll").json()["drift"] is None


def test_under_the_two_person_rule_a_drift_change_waits_for_another_admin(
    two_person,  # noqa: F811
    agent_api,
    privileges,
    client,
    admin_user,
    second_admin,  # noqa: F811
):
    grant_id = granted(agent_api)
    drift = Policy.objects.get(name="drift-default")
    client.force_login(admin_user)
    prefilled = client.get(f"/admin/approvals/policyproposal/add/?policy={drift.pk}")
    assert "drift-flags" in prefilled.content.decode()
    data = {
        "policy": str(drift.pk),
        "name": "drift-default",
        "description": "",
        "enabled": "on",
    }
    # Validated against the drift schema (the policy's kind), and refused with Cedar's words.
    invalid = client.post("/admin/approvals/policyproposal/add/", {**data, "text": REQUEST_ONLY})
    assert invalid.status_code == 200 and "Cedar says:" in invalid.content.decode()
    assert not PolicyProposal.objects.exists()
    # A drift change has no request simulation: it is kept as a proposal at the first save.
    proposed = client.post("/admin/approvals/policyproposal/add/", {**data, "text": END_ON_TARGET})
    assert proposed.status_code == 302, proposed.content.decode()[:3000]
    proposal = PolicyProposal.objects.get()
    assert (proposal.kind, proposal.base_version) == ("drift", 1)
    assert AuditEvent.objects.get(verb="policy.proposed").data["kind"] == "drift"
    assert call(agent_api, grant_id, target="payroll").json()["drift"]["outcome"] == "flag"

    decide = f"/admin/approvals/policyproposal/{proposal.pk}/decide/"
    assert client.post(decide, {"apply": "1"}).status_code == 403
    client.force_login(second_admin)
    page = client.get(f"/admin/approvals/policyproposal/{proposal.pk}/change/").content.decode()
    assert 'name="apply"' in page
    assert client.post(decide, {"apply": "1"}).status_code == 302
    drift.refresh_from_db()
    assert (drift.kind, drift.version, drift.text) == ("drift", 2, END_ON_TARGET.strip())
    assert AuditEvent.objects.get(verb="policy.applied").actor_id == "admin-two"
    assert call(agent_api, grant_id, target="payroll").json()["drift"]["outcome"] == "end"


def test_a_drift_policy_is_changed_only_by_a_policy_admin(privileges, client):
    staff = UserFactory(username="helpdesk", is_staff=True)
    client.force_login(staff)
    drift = Policy.objects.get(name="drift-default")
    assert client.get(change_url(drift)).status_code == 403
    assert client.post(change_url(drift), drift_form()).status_code == 403
    drift.refresh_from_db()
    assert drift.version == 1
