"""The poll path (RFC 8936): the resource server's poll loop fetches, verifies, applies and
acknowledges Custody's Security Event Tokens, against a live Custody; and the poll endpoint's
answers to bad input and to callers without a stream."""

import pytest
from custody_client.events import Poller
from custody_client.verify import TokenRevoked
from django.test import Client

from ssf.models import SecurityEvent, Stream
from tests.factories import ResourceServerFactory
from tests.ssf.conftest import add_stream, submit

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_poll_loop_refuses_a_revoked_grant_and_acknowledges_the_event(
    agent_api, privileges, verifier, poll_stream, sponsor
):
    body = submit(agent_api, "payments-db:read").json()
    grant_id, token = body["grant"]["id"], body["grant"]["access_token"]
    verifier.verify(token)
    poller = Poller(verifier).start()
    try:
        client = Client()
        client.force_login(sponsor)
        assert client.post(f"/grants/{grant_id}/revoke/", {"reason": "x"}).status_code == 302

        assert verifier.revocations.wait_for_grant(grant_id, 15)
        with pytest.raises(TokenRevoked):
            verifier.verify(token)
    finally:
        poller.stop()
    # The loop's next request acknowledged it (stop() waits for that request to end).
    assert SecurityEvent.objects.get(grant_id=grant_id).delivered_at is not None


def test_a_poll_returns_only_the_callers_events_and_forgets_acknowledged_ones(
    agent_api, privileges, resource_server, resource_server_api, poll_stream, signer
):
    other = ResourceServerFactory(introspection_audiences=["payments-api"])
    add_stream(other, delivery=Stream.Delivery.POLL)
    read = submit(agent_api, "payments-db:read").json()["grant"]["id"]
    agent_api.post(f"/api/v1/grants/{read}/complete")

    first = resource_server_api.post(
        "/api/v1/ssf/poll", {"returnImmediately": True}, format="json"
    ).json()
    assert len(first["sets"]) == 1 and first["moreAvailable"] is False
    assert SecurityEvent.objects.filter(stream__receiver=other).count() == 0

    jti = next(iter(first["sets"]))
    second = resource_server_api.post(
        "/api/v1/ssf/poll", {"ack": [jti], "returnImmediately": True}, format="json"
    ).json()
    assert second == {"sets": {}, "moreAvailable": False}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"ack": "abc"}, "ack"),
        ({"ack": [1, 2]}, "ack"),
        ({"maxEvents": -1}, "maxEvents"),
        ({"maxEvents": "ten"}, "maxEvents"),
        ({"returnImmediately": "yes"}, "returnImmediately"),
        ({"setErrs": ["x"]}, "setErrs"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_bad_poll_input_is_a_400_with_a_sentence(resource_server_api, poll_stream, body, field):
    response = resource_server_api.post("/api/v1/ssf/poll", body, format="json")

    assert response.status_code == 400
    assert field in response.content.decode()


def test_a_workload_without_a_poll_stream_gets_a_404(agent_api, resource_server_api, push_stream):
    for client in (agent_api, resource_server_api):
        response = client.post("/api/v1/ssf/poll", {"returnImmediately": True}, format="json")
        assert response.status_code == 404
        assert "poll stream" in response.json()["error"]["message"]


def test_people_and_strangers_cannot_poll(api, sponsor):
    assert api.post("/api/v1/ssf/poll", {}, format="json").status_code == 401


def test_the_stream_and_transmitter_metadata_describe_the_delivery(
    api, resource_server_api, poll_stream
):
    stream = resource_server_api.get("/api/v1/ssf/stream").json()
    assert stream["delivery"]["method"] == "urn:ietf:rfc:8936"
    assert stream["aud"] == poll_stream.receiver.spiffe_id
    metadata = api.get("/.well-known/ssf-configuration").json()
    assert metadata["jwks_uri"].endswith("/.well-known/jwks.json")
    assert "urn:ietf:rfc:8935" in metadata["delivery_methods_supported"]
