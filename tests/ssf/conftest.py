"""A resource server that verifies Custody's tokens locally and hears of revocation: the
`custody_client` verifier against a live Custody (pytest-django's live server), its Shared
Signals stream configured as an admin would."""

import pytest
from custody_client.events import PushReceiver, serve_push_receiver
from custody_client.verify import Verifier
from django.conf import settings
from rest_framework.test import APIClient

from audit.services import Actor
from ssf.models import Stream
from ssf.services import stream_save
from tests.approvals import conftest as approvals_conftest
from tests.factories import ResourceServerFactory
from tests.workers import Worker

privileges = approvals_conftest.privileges
submit = approvals_conftest.submit
PUSH_SECRET = "Bearer push-secret-for-the-payments-gateway"


@pytest.fixture
def resource_server(db, trust_domain, sponsor, team):
    return ResourceServerFactory(
        spiffe_id="spiffe://example.test/resource-servers/payments-db",
        name="payments-db gateway",
        sponsor=sponsor,
        team=team,
        introspection_audiences=["payments-db"],
    )


@pytest.fixture
def make_verifier(live_server, resource_server, signer):
    made = []

    def make(**overrides):
        verifier = Verifier(
            issuer=settings.CUSTODY_ISSUER,
            audience="payments-db",
            base_url=live_server.url,
            credentials=lambda: signer.mint(resource_server.spiffe_id),
            set_audience=resource_server.spiffe_id,
            **overrides,
        )
        verifier.jwks.min_refresh_seconds = 0
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        verifier.http.close()


@pytest.fixture
def verifier(make_verifier):
    return make_verifier()


@pytest.fixture
def push_receiver(verifier):
    """The resource server's RFC 8935 endpoint, served in a thread; yields its URL."""
    server, url = serve_push_receiver(PushReceiver(verifier, authorization=PUSH_SECRET))
    yield url
    server.shutdown()
    server.server_close()


def add_stream(receiver, *, delivery, endpoint_url="", authorization_header=""):
    return stream_save(
        stream=Stream(
            receiver=receiver,
            delivery=delivery,
            endpoint_url=endpoint_url,
            authorization_header=authorization_header,
        ),
        actor=Actor.system("test-admin"),
    )


@pytest.fixture
def push_stream(resource_server, push_receiver):
    return add_stream(
        resource_server,
        delivery=Stream.Delivery.PUSH,
        endpoint_url=push_receiver,
        authorization_header=PUSH_SECRET,
    )


@pytest.fixture
def poll_stream(resource_server):
    return add_stream(resource_server, delivery=Stream.Delivery.POLL)


@pytest.fixture
def worker():
    started = Worker(broker_url=settings.CELERY_BROKER_URL)
    yield started
    started.stop()


@pytest.fixture
def resource_server_api(resource_server, signer):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(resource_server.spiffe_id)}")
    return client
