"""Admins name a Redis or webhook broker for a privilege (the broker validates it) and see its
credentials' state per target."""

import pytest
from django.conf import settings

from approvals import tokens
from audit.models import AuditEvent
from brokers.models import PrivilegeBroker
from tests.brokers.conftest import submit
from tests.factories import PrivilegeFactory
from tests.fake_webhook import FakeWebhook

REDIS = '{"target": "cache", "key_patterns": ["payments:*"], "commands": ["+@read"]}'


def add(client, privilege, kind: str, config: str):
    return client.post(
        "/admin/brokers/privilegebroker/add/",
        {"privilege": privilege.pk, "kind": kind, "config": config, "enabled": "on"},
    )


@pytest.fixture
def privilege(db):
    return PrivilegeFactory(resource="billing", action="read", risk="low")


def test_it_refuses_a_redis_broker_that_could_manage_the_server(client, admin_user, privilege):
    client.force_login(admin_user)

    refused = add(client, privilege, "redis", REDIS.replace("+@read", "+@all"))

    assert refused.status_code == 200
    assert "would let a brokered credential manage the server" in refused.content.decode()
    assert not PrivilegeBroker.objects.exists()
    assert not AuditEvent.objects.filter(verb="broker.configured").exists()


def test_it_saves_a_redis_broker_and_names_its_variable(client, admin_user, privilege, monkeypatch):
    monkeypatch.setenv("CUSTODY_BROKER_CACHE_URL", "redis://custody-admin:x@127.0.0.1:1/0")
    client.force_login(admin_user)

    saved = add(client, privilege, "redis", REDIS)

    assert saved.status_code == 302, saved.content.decode()[:2000]
    broker = PrivilegeBroker.objects.get(privilege=privilege)
    assert broker.config["channels"] == []
    page = client.get(f"/admin/brokers/privilegebroker/{broker.pk}/change/").content.decode()
    assert "CUSTODY_BROKER_CACHE_URL (set, or its _FILE)" in page
    assert "custody-admin:x" not in page


def test_a_webhook_broker_needs_https_without_the_development_switch(
    client, admin_user, privilege, settings
):
    settings.CUSTODY_BROKER_WEBHOOK_ALLOW_HTTP = False
    client.force_login(admin_user)

    refused = add(client, privilege, "webhook", '{"url": "http://billing.internal/custody"}')
    saved = add(client, privilege, "webhook", '{"url": "https://billing.internal/custody"}')

    assert "must start with https://" in refused.content.decode()
    assert saved.status_code == 302
    broker = PrivilegeBroker.objects.get(privilege=privilege)
    assert broker.target == "billing.internal"
    page = client.get(f"/admin/brokers/privilegebroker/{broker.pk}/change/").content.decode()
    assert "this broker needs no connection secret" in page


def test_the_credentials_page_counts_a_webhooks_pending_revocation(
    client, admin_user, agent_api, privilege
):
    tokens._current_signing_key()
    receiver = FakeWebhook(
        issuer=settings.CUSTODY_ISSUER, audience="billing", jwks=tokens.public_jwks()
    ).start()
    try:
        client.force_login(admin_user)
        add(client, privilege, "webhook", f'{{"url": "{receiver.url}", "audience": "billing"}}')
        grant_id = submit(agent_api, "billing:read").json()["grant"]["id"]
        fetched = agent_api.post(f"/api/v1/grants/{grant_id}/credential", format="json")
        assert fetched.status_code == 201, fetched.content
        # Completed with no worker running: the destruction waits in the outbox.
        agent_api.post(f"/api/v1/grants/{grant_id}/complete", format="json")
    finally:
        receiver.stop()

    page = client.get("/admin/brokers/brokeredcredential/").content.decode()

    row = f"<td>webhook</td><td>127.0.0.1:{receiver.port}</td><td>0</td><td>1</td>"
    assert row in page
    assert fetched.json()["secret"]["password"] not in page
