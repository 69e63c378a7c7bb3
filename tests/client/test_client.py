"""The Python client end to end: every call against the live Custody, every refusal from the
real server as its typed exception."""

from datetime import timedelta

import jwt
import pytest
from custody_client import (
    CallableSvidSource,
    Client,
    Conflict,
    Denied,
    Expired,
    GrantEnded,
    InvalidRequest,
    NotEligible,
    NotFound,
    PendingApproval,
    RateLimited,
    Retry,
    Unauthenticated,
    Unavailable,
)
from django.utils import timezone

from approvals.models import AccessRequest, Eligibility, Grant
from audit.models import AuditEvent
from tests.client.conftest import Background, approve_when_pending, wait_until
from tests.factories import PolicyFactory
from tests.identity import SigningIdentity
from tests.workers import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_whoami_names_the_agent(custody, agent):
    me = custody.whoami()
    assert (me["spiffe_id"], me["name"], me["sponsor"]) == (
        agent.spiffe_id,
        "Invoice bot",
        "sponsor",
    )


def test_an_automatic_grant_comes_with_its_token(custody, agent):
    grant = custody.request("payments-db:read", "t-auto", "Reconcile invoices", "10m")
    token = claims(grant.access_token)
    assert (token["grant_id"], token["scope"], token["task_id"]) == (
        grant.id,
        "payments-db:read",
        "t-auto",
    )
    assert grant.privilege == "payments-db:read"
    assert grant.intent == {
        "action": "read",
        "target": "payments-db",
        "justification": "Reconcile invoices",
    }
    assert Grant.objects.get(pk=grant.id).agent_id == agent.pk
    assert [listed["id"] for listed in custody.grants(active=True)] == [grant.id]
    same = custody.grant(grant.id)
    assert (same.id, same.privilege, same.request_id) == (
        grant.id,
        grant.privilege,
        grant.request_id,
    )
    assert claims(same.access_token)["grant_id"] == grant.id  # fetched on first use
    assert custody.get_request(grant.request_id)["status"] == "approved"
    assert {e["privilege"] for e in custody.eligibility()} >= {"payments-db:read"}
    assert "payments-db:read" in {p["privilege"] for p in custody.privileges(eligible=True)}


def test_request_blocks_on_the_long_poll_until_people_approve(custody, sponsor):
    asking = Background(
        lambda: custody.request(
            "payments-api:refund",
            "t-refund",
            {"action": "refund", "target": "order 42", "justification": "Double charge."},
            timedelta(minutes=5),
        )
    )
    approve_when_pending(sponsor, privilege="payments-api:refund")
    grant = asking.result()
    assert claims(grant.access_token)["scope"] == "payments-api:refund"
    assert Grant.objects.get(pk=grant.id).expires_at > timezone.now()


def test_not_waiting_raises_pending_and_wait_for_resumes(custody, sponsor):
    with pytest.raises(PendingApproval) as pending:
        custody.request("payments-api:refund", "t-later", "Refund", 300, wait=False)
    request_id = pending.value.request_id
    with pytest.raises(PendingApproval):
        custody.wait_for(request_id, wait=1)  # one short long poll, still pending
    asking = Background(lambda: custody.wait_for(request_id))
    approve_when_pending(sponsor, privilege="payments-api:refund")
    assert asking.result().request_id == request_id


def test_cancel_withdraws_a_pending_request(custody):
    with pytest.raises(PendingApproval) as pending:
        custody.request("payments-api:refund", "t-cancel", "Refund", 300, wait=False)
    assert custody.cancel(pending.value.request_id)["status"] == "cancelled"
    with pytest.raises(Conflict) as again:
        custody.cancel(pending.value.request_id)
    assert again.value.code == "request_not_pending" and again.value.status == 409


def test_people_denying_raises_denied_with_their_reason(custody, sponsor):
    asking = Background(lambda: custody.request("payments-api:refund", "t-no", "Refund", 300))
    approve_when_pending(
        sponsor, privilege="payments-api:refund", verdict="deny", comment="Not this order."
    )
    with pytest.raises(Denied) as denied:
        asking.result()
    assert not isinstance(denied.value, NotEligible)
    assert denied.value.reason == "denied by sponsor"
    assert denied.value.request_id is not None


def test_a_policy_denial_raises_denied_with_the_policys_reason(custody):
    PolicyFactory(
        name="quarter-close",
        text='@id("freeze-payments-reads")\n@reason("Payments are frozen for the quarter close.")\n'
        'forbid (principal, action, resource) when { resource.resource == "payments-db" };',
    )
    with pytest.raises(Denied) as denied:
        custody.request("payments-db:read", "t-frozen", "Reconcile", 60)
    assert denied.value.reason == "Payments are frozen for the quarter close."
    assert denied.value.policies == ["freeze-payments-reads"]


@pytest.mark.eligibility
def test_an_agent_not_eligible_gets_not_eligible(custody, agent, privileges):
    Eligibility.objects.create(agent=agent, privilege=privileges["read"], granted_by="test")
    with pytest.raises(NotEligible) as refused:
        custody.request("payments-db:write", "t-write", "Fix totals", 300)
    assert refused.value.policies == ["not-eligible"]
    assert "not eligible for payments-db:write" in refused.value.reason


def test_a_request_past_its_deadline_raises_expired(custody, privileges):
    privileges["refund"].decision_deadline_seconds = 1
    privileges["refund"].save()
    with pytest.raises(Expired) as expired:
        custody.request("payments-api:refund", "t-late", "Refund", 300)
    assert expired.value.code == "request_expired"


def test_a_429_is_retried_after_retry_after(custody, agent, privileges, settings):
    """Flood control answers 429 with Retry-After until the earliest pending deadline; the
    client waits that long and its retry is accepted."""
    settings.CUSTODY_MAX_PENDING_PER_AGENT = 1
    privileges["refund"].decision_deadline_seconds = 2
    privileges["refund"].save()
    with pytest.raises(PendingApproval):
        custody.request("payments-api:refund", "t-1", "Refund", 300, wait=False)
    with pytest.raises(PendingApproval) as second:
        custody.request("payments-api:refund", "t-2", "Refund", 300, wait=False)
    assert AccessRequest.objects.get(pk=second.value.request_id).task_id == "t-2"
    assert AuditEvent.objects.filter(verb="request.throttled").count() == 1


def test_a_429_asking_for_too_long_raises_rate_limited(custody, settings):
    settings.CUSTODY_MAX_PENDING_PER_AGENT = 1
    with pytest.raises(PendingApproval):
        custody.request("payments-api:refund", "t-1", "Refund", 300, wait=False)
    with pytest.raises(RateLimited) as limited:
        custody.request("payments-api:refund", "t-2", "Refund", 300, wait=False)
    assert limited.value.status == 429 and limited.value.retry_after > 30
    assert AuditEvent.objects.filter(verb="request.throttled").count() == 1  # not retried


def test_bad_input_raises_invalid_request_with_fields(custody):
    with pytest.raises(InvalidRequest) as invalid:
        custody.request("payments-db:read", "has spaces", "Reconcile", 60)
    assert "task_id" in invalid.value.fields
    with pytest.raises(InvalidRequest) as unknown:
        custody.request("payments-db:drop", "t-1", "Reconcile", 60)
    assert unknown.value.status == 400


def test_an_unknown_grant_raises_not_found(custody):
    with pytest.raises(NotFound):
        custody.grant(987654)


def test_an_svid_custody_does_not_trust_raises_unauthenticated(live_server, agent, privileges):
    stranger = SigningIdentity("ES256")
    source = CallableSvidSource(lambda audience: stranger.mint(agent.spiffe_id, audience=audience))
    with Client(live_server.url, source) as client, pytest.raises(Unauthenticated) as refused:
        client.whoami()
    assert refused.value.status == 401


def test_an_unreachable_custody_raises_unavailable_after_retries(agent, svid_for):
    client = Client(
        f"http://127.0.0.1:{free_port()}", svid_for(agent), retry=Retry(attempts=3, backoff=0.01)
    )
    with pytest.raises(Unavailable) as unreachable:
        client.whoami()
    assert unreachable.value.code == "unreachable"


def test_tool_calls_are_evidence_and_drift_is_reported(custody):
    grant = custody.request(
        "payments-db:read",
        "t-tools",
        {"action": "read", "target": "db/invoices", "justification": "Reconcile"},
        600,
    )
    fine = grant.record_tool_call("sql", target="db/invoices/7", action="read")
    assert fine["drift"] is None
    drifted = grant.record_tool_call("sql", target="db/salaries", action="read")
    assert "target" in drifted["drift"]["kinds"]
    called = AuditEvent.objects.filter(grant_id=grant.id, verb="tool.called").order_by("sequence")
    assert [event.data["target"] for event in called] == ["db/invoices/7", "db/salaries"]


def test_complete_ends_the_grant_and_later_calls_raise_grant_ended(custody):
    grant = custody.request("payments-db:read", "t-done", "Reconcile", 600)
    assert grant.complete()["ended_reason"] == "completed"
    with pytest.raises(GrantEnded) as ended:
        grant.record_tool_call("sql", target="payments-db")
    assert ended.value.code == "grant_not_active"
    with pytest.raises(GrantEnded):
        grant.refresh()


def test_the_token_refreshes_itself_before_it_expires(custody, settings):
    settings.CUSTODY_ACCESS_TOKEN_SECONDS = 4  # refreshed in its last quarter (1 s)
    grant = custody.request("payments-db:read", "t-refresh", "Reconcile", 600)
    first = grant.access_token
    assert grant.access_token == first  # fresh: not refreshed
    exp = claims(first)["exp"]
    wait_until(lambda: timezone.now().timestamp() > exp - 0.9, timeout=6)
    second = grant.access_token  # under a second left: refreshed before it expires
    assert second != first and claims(second)["exp"] > exp
    assert AuditEvent.objects.filter(grant_id=grant.id, verb="token.issued").count() == 2


def test_extend_is_a_new_request_answered_with_a_new_grant(custody, sponsor):
    grant = custody.request("payments-db:read", "t-extend", "Reconcile", 300)
    asking = Background(lambda: grant.extend("5m", intent="Still reconciling"))
    approve_when_pending(sponsor, privilege="payments-db:read")
    longer = asking.result()
    assert longer.id != grant.id and longer.privilege == "payments-db:read"
    assert claims(longer.access_token)["grant_id"] == longer.id


def test_delegate_hands_a_narrower_grant_to_a_sub_agent(
    custody, live_server, research_agent, svid_for
):
    grant = custody.request("payments-db:read", "t-parent", "Reconcile", 600)
    with Client(live_server.url, svid_for(research_agent)) as sub_agent:
        delegation = grant.delegate(
            sub_agent.actor_token(), intent="Read the rows", duration=120, task_id="t-parent/rows"
        )
        assert not delegation.pending and delegation.scope == "payments-db:read"
        delegated = claims(delegation.access_token)
        assert delegated["sub"] == "spiffe://example.test/agents/invoice-bot"  # the root
        assert delegated["act"]["sub"] == research_agent.spiffe_id  # the actor
        held = sub_agent.grant(delegation.grant_id)
        assert claims(held.access_token)["sub"] == "spiffe://example.test/agents/invoice-bot"
        assert held.task_id == "t-parent/rows"
    grant.complete()  # revocation cascades
    assert Grant.objects.get(pk=delegation.grant_id).revoke_reason == "cascade"


def test_a_refused_delegation_raises_with_custodys_words_from_the_oauth_error(
    custody, research_agent, signer
):
    grant = custody.request("payments-db:read", "t-refused", "Reconcile", 600)
    login_svid = signer.mint(research_agent.spiffe_id)  # a login SVID, not an actor token
    with pytest.raises(InvalidRequest) as refused:
        grant.delegate(login_svid, intent="Read the rows", duration=120)
    assert refused.value.status == 400
    assert refused.value.code == "invalid_request"
    assert refused.value.message.startswith("The actor_token was refused")
    assert list(refused.value.fields) == ["actor_token"]
    assert refused.value.body["error"] == "invalid_request"  # RFC 6749 §5.2 as Custody sent it


def test_the_context_manager_completes_on_exit(custody):
    with custody.request("payments-db:read", "t-with", "Reconcile", 600) as grant:
        grant.record_tool_call("sql", target="payments-db")
    assert Grant.objects.get(pk=grant.id).revoke_reason == "completed"


def test_the_context_manager_records_a_failure_then_completes(custody):
    with (
        pytest.raises(ZeroDivisionError),
        custody.request("payments-db:read", "t-boom", "Reconcile", 600) as grant,
    ):
        raise ZeroDivisionError("no rows to divide")
    failure = AuditEvent.objects.get(grant_id=grant.id, verb="tool.called")
    assert failure.data["outcome"] == "failure"
    assert failure.data["detail"]["exception"] == "ZeroDivisionError"
    assert Grant.objects.get(pk=grant.id).revoke_reason == "completed"


def test_leaving_the_block_of_a_revoked_grant_is_quiet(custody, sponsor):
    from approvals.services import grant_revoke
    from audit.services import Actor

    with custody.request("payments-db:read", "t-revoked", "Reconcile", 600) as grant:
        grant_revoke(grant=Grant.objects.get(pk=grant.id), actor=Actor.for_user(sponsor))
    assert Grant.objects.get(pk=grant.id).revoke_reason == "revoked"


def test_a_delegation_across_sponsors_waits_for_the_sub_agents_sponsor(
    custody, live_server, svid_for, team
):
    from tests.factories import AgentFactory, UserFactory

    carol = UserFactory(username="carol")
    carol.groups.add(team)
    helper = AgentFactory(
        spiffe_id="spiffe://example.test/agents/helper", name="Helper", sponsor=carol, team=team
    )
    grant = custody.request("payments-db:read", "t-cross", "Reconcile", 600)
    with Client(live_server.url, svid_for(helper), max_poll_seconds=5) as sub_agent:
        delegation = grant.delegate(sub_agent.actor_token(), intent="Rows", duration=120)
        assert delegation.pending and delegation.agent == helper.spiffe_id
        asking = Background(lambda: sub_agent.wait_for(delegation.request_id))
        approve_when_pending(carol, privilege="payments-db:read")
        held = asking.result()
    assert claims(held.access_token)["act"]["sub"] == helper.spiffe_id
    assert Grant.objects.get(pk=held.id).parent_id == grant.id


def test_grant_auth_and_headers_carry_the_fresh_token(custody):
    import httpx

    grant = custody.request("payments-db:read", "t-auth", "Reconcile", 600)
    seen = []

    def resource_server(request):  # stands in for the payments database's gateway
        seen.append(request.headers["Authorization"])
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(resource_server)) as http:
        http.get("http://payments-db.internal/invoices", auth=grant.auth)
        http.get("http://payments-db.internal/invoices", headers=grant.headers())
    assert seen == [f"Bearer {grant.access_token}"] * 2
