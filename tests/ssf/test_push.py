"""End to end: a resource server verifying Custody's tokens locally refuses a grant's token as
soon as Custody pushes (RFC 8935) the Security Event Token for its end: revoked by a person,
completed by the agent, expired by the worker, the agent suspended. A real Celery worker on
Redis delivers; nothing in the test calls a task."""

import time

import jwt
import pytest
from custody_client.events import PushReceiver, serve_push_receiver
from custody_client.verify import TokenRevoked
from django.test import Client

from audit.models import AuditEvent
from audit.services import verify_chain
from ssf.models import SESSION_REVOKED, SecurityEvent, Stream
from tests.ssf.conftest import PUSH_SECRET, add_stream, submit
from tests.workers import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
PUSH_WAIT = 15  # seconds: generous for a loaded machine; the bench measures the real figure


def live_grant(agent_api, **kwargs):
    body = submit(agent_api, "payments-db:read", **kwargs).json()
    assert body["status"] == "approved", body
    return body["grant"]["id"], body["grant"]["access_token"]


def web(user):
    client = Client()
    client.force_login(user)
    return client


def test_it_refuses_a_revoked_grants_token_once_the_event_is_pushed(
    worker, agent_api, privileges, verifier, push_stream, sponsor
):
    grant_id, token = live_grant(agent_api)
    accepted = verifier.verify(token)
    assert accepted.grant_id == grant_id
    assert accepted.has_scope("payments-db:read")
    assert accepted.task_id == "task-1"

    response = web(sponsor).post(f"/grants/{grant_id}/revoke/", {"reason": "leaked"})
    assert response.status_code == 302

    assert verifier.revocations.wait_for_grant(grant_id, PUSH_WAIT), worker.output()[-3000:]
    with pytest.raises(TokenRevoked):
        verifier.verify(token)
    # The worker records the delivery once the receiver's 202 is back.
    deadline = time.monotonic() + PUSH_WAIT
    while SecurityEvent.objects.get(grant_id=grant_id).delivered_at is None:
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.05)
    assert SecurityEvent.objects.get(grant_id=grant_id).attempts == 1
    assert AuditEvent.objects.filter(verb="security_event.delivered", grant_id=grant_id).exists()
    assert verify_chain().ok


def test_it_refuses_a_completed_grants_token(worker, agent_api, privileges, verifier, push_stream):
    grant_id, token = live_grant(agent_api)
    verifier.verify(token)

    assert agent_api.post(f"/api/v1/grants/{grant_id}/complete").status_code == 200

    assert verifier.revocations.wait_for_grant(grant_id, PUSH_WAIT), worker.output()[-3000:]
    with pytest.raises(TokenRevoked):
        verifier.verify(token)


def test_it_refuses_an_expired_grants_token_even_with_a_lenient_clock(
    worker, agent_api, privileges, make_verifier, resource_server
):
    """A verifier allowing 60 s of clock skew would honour the token a minute past the grant;
    the pushed event of the expiry ends that at once."""
    verifier = make_verifier(leeway=60)
    server, url = serve_push_receiver(PushReceiver(verifier, authorization=PUSH_SECRET))
    try:
        add_stream(
            resource_server,
            delivery=Stream.Delivery.PUSH,
            endpoint_url=url,
            authorization_header=PUSH_SECRET,
        )
        grant_id, token = live_grant(agent_api, duration=2)
        verifier.verify(token)

        assert verifier.revocations.wait_for_grant(grant_id, 2 + PUSH_WAIT), worker.output()[-3000:]
        with pytest.raises(TokenRevoked):
            verifier.verify(token)
    finally:
        server.shutdown()
        server.server_close()
    claims = jwt.decode(
        SecurityEvent.objects.get(grant_id=grant_id).token, options={"verify_signature": False}
    )
    assert claims["events"][SESSION_REVOKED]["custody"]["reason"] == "expired"


def test_suspending_the_agent_refuses_its_tokens(
    worker, agent_api, privileges, verifier, push_stream, sponsor, agent
):
    grant_id, token = live_grant(agent_api)
    verifier.verify(token)

    response = web(sponsor).post(f"/agents/{agent.pk}/suspend/", {"reason": "compromised"})
    assert response.status_code == 302

    assert verifier.revocations.wait_for_grant(grant_id, PUSH_WAIT), worker.output()[-3000:]
    with pytest.raises(TokenRevoked):
        verifier.verify(token)
    kinds = set(SecurityEvent.objects.values_list("event_type", flat=True))
    assert {k.rsplit("/", 1)[-1] for k in kinds} == {"session-revoked", "account-disabled"}


def test_a_receiver_that_is_down_gets_the_event_when_it_is_back(
    worker, agent_api, privileges, verifier, push_stream, sponsor
):
    """Retried by Celery with back-off until the receiver answers 202."""

    port = free_port()
    push_stream.endpoint_url = f"http://127.0.0.1:{port}/"
    push_stream.save(update_fields=["endpoint_url"])
    grant_id, token = live_grant(agent_api)
    web(sponsor).post(f"/grants/{grant_id}/revoke/", {"reason": "leaked"})

    deadline = time.monotonic() + PUSH_WAIT
    while SecurityEvent.objects.get(grant_id=grant_id).attempts < 2:
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.1)
    verifier.verify(token)  # not heard of yet: still honoured locally
    server, _ = serve_push_receiver(PushReceiver(verifier, authorization=PUSH_SECRET), port=port)
    try:
        assert verifier.revocations.wait_for_grant(grant_id, 30), worker.output()[-3000:]
    finally:
        server.shutdown()
        server.server_close()
    deadline = time.monotonic() + PUSH_WAIT
    while SecurityEvent.objects.get(grant_id=grant_id).delivered_at is None:
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.05)
    assert SecurityEvent.objects.get(grant_id=grant_id).attempts >= 3
