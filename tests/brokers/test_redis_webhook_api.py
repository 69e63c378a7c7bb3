"""End to end through the API: an agent's grant of a privilege brokered by Redis or a webhook
becomes a real credential (`POST /api/v1/grants/{id}/credential`), and when the grant ends a
real Celery worker (with beat) destroys it: the Redis user is deleted and its open client
killed; the webhook receiver gets a signed destroy, also after it was down for a while."""

import json
import logging
import urllib.request

import pytest
import redis
from django.conf import settings
from django.test import Client

from approvals import tokens
from audit.models import AuditEvent
from brokers.models import BrokeredCredential
from tests.brokers.conftest import add_broker, submit, wait_for
from tests.factories import PrivilegeFactory
from tests.fake_webhook import FakeWebhook
from tests.workers import RedisServer, Worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ADMIN_PASSWORD = "redis-admin-password-for-this-test-only"
FAST = {"CUSTODY_BROKER_SWEEP_SECONDS": "1", "CUSTODY_BROKER_MAX_BACKOFF_SECONDS": "1"}


@pytest.fixture
def worker():
    started = Worker(broker_url=settings.CELERY_BROKER_URL, env=FAST)
    yield started
    started.stop()


@pytest.fixture
def redis_target(monkeypatch, tmp_path):
    # Users in an ACL file, so a user saved there survives a restart (the outage test).
    acl_file = tmp_path / "users.acl"
    acl_file.write_text(f"user custody-admin on >{ADMIN_PASSWORD} ~* &* +@all\nuser default off\n")
    server = RedisServer("--aclfile", str(acl_file))
    # In os.environ before the worker starts: it inherits the variable.
    monkeypatch.setenv(
        "CUSTODY_BROKER_CACHE_URL",
        f"redis://custody-admin:{ADMIN_PASSWORD}@127.0.0.1:{server.port}/0",
    )
    yield server
    server.stop()


@pytest.fixture
def receiver(live_server):
    """The system's receiver, verifying with the JWKS Custody publishes."""

    def custody_jwks() -> dict:
        url = f"{live_server.url}/.well-known/jwks.json"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return json.load(response)

    tokens._current_signing_key()  # made before the worker looks for one
    started = FakeWebhook(issuer=settings.CUSTODY_ISSUER, audience="billing", jwks=custody_jwks)
    yield started.start()
    started.stop()


def webhook_privilege(receiver):
    """A low-risk privilege (auto-approved by the shipped policy) the webhook provisions."""
    privilege = PrivilegeFactory(resource="billing", action="read", risk="low")
    return add_broker(privilege, {"url": receiver.url, "audience": "billing"}, kind="webhook")


def granted(agent_api, privilege: str, task_id: str) -> int:
    answer = submit(agent_api, privilege, task_id=task_id)
    assert answer.status_code == 201, answer.content
    return answer.json()["grant"]["id"]


def fetch(agent_api, grant_id: int) -> dict:
    answer = agent_api.post(f"/api/v1/grants/{grant_id}/credential", format="json")
    assert answer.status_code == 201, answer.content
    return answer.json()["secret"]


def credential_state(agent_api, grant_id: int) -> str:
    return agent_api.get(f"/api/v1/grants/{grant_id}").json()["credential"]["state"]


def assert_never_recorded(secret_value: str, caplog) -> None:
    for event in AuditEvent.objects.all():
        assert secret_value not in str(event.data)
    assert secret_value not in caplog.text


def test_a_redis_credential_works_while_granted_and_dies_with_the_task(
    redis_target, worker, agent_api, privileges, caplog
):
    caplog.set_level(logging.DEBUG)
    add_broker(
        privileges["read"],
        {"target": "cache", "key_patterns": ["payments:*"], "commands": ["+@read", "+set"]},
        kind="redis",
    )
    grant_id = granted(agent_api, "payments-db:read", "task-redis")

    secret = fetch(agent_api, grant_id)

    assert secret["username"].startswith(f"custody_g{grant_id}_")
    client = redis.Redis.from_url(secret["url"], decode_responses=True)
    assert client.set("payments:1", "paid") and client.get("payments:1") == "paid"
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.get("salaries:1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.delete("payments:1")  # a read privilege with SET only
    open_connection = redis.Connection(
        port=redis_target.port,
        username=secret["username"],
        password=secret["password"],
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    open_connection.connect()
    assert credential_state(agent_api, grant_id) == "live"

    completed = agent_api.post(f"/api/v1/grants/{grant_id}/complete", format="json")

    assert completed.status_code == 200
    wait_for(
        lambda: credential_state(agent_api, grant_id) == "destroyed",
        what=f"the worker destroying the Redis user:\n{worker.output()[-3000:]}",
    )
    open_connection.send_command("GET", "payments:1")
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        open_connection.read_response()  # the client opened while granted was killed
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(secret["url"]).ping()  # and a new login is refused
    assert (
        redis.Redis(
            port=redis_target.port, username="custody-admin", password=ADMIN_PASSWORD
        ).acl_getuser(secret["username"])
        is None
    )
    assert_never_recorded(secret["password"], caplog)


def test_a_webhook_credential_is_made_and_destroyed_by_signed_requests(
    worker, agent_api, agent, privileges, receiver, sponsor, caplog
):
    caplog.set_level(logging.DEBUG)
    webhook_privilege(receiver)
    grant_id = granted(agent_api, "billing:read", "task-webhook")

    secret = fetch(agent_api, grant_id)

    (create,) = receiver.actions("create", 201)
    assert secret["username"] == create["credential"] in receiver.accounts.live
    assert create["sub"] == agent.spiffe_id
    assert create["privilege"] == "billing:read"
    assert create["grant_id"] == grant_id and create["task_id"] == "task-webhook"

    web = Client()
    web.force_login(sponsor)
    revoked = web.post(f"/grants/{grant_id}/revoke/", {"reason": "the refund is done"})

    assert revoked.status_code in (200, 302)
    assert receiver.wait_for(lambda: receiver.actions("destroy", 204)), worker.output()[-3000:]
    (destroy,) = receiver.actions("destroy")
    assert destroy["credential"] == create["credential"] and destroy["grant_id"] == grant_id
    assert not receiver.accounts.live
    wait_for(lambda: credential_state(agent_api, grant_id) == "destroyed", what="destroyed")
    assert_never_recorded(secret["password"], caplog)


def test_a_webhook_down_at_the_end_leaves_the_revocation_pending_until_it_is_back(
    worker, agent_api, privileges, receiver
):
    webhook_privilege(receiver)
    grant_id = granted(agent_api, "billing:read", "task-outage")
    fetch(agent_api, grant_id)
    receiver.stop()

    completed = agent_api.post(f"/api/v1/grants/{grant_id}/complete", format="json")

    assert completed.json()["credential"]["state"] == "destroy_pending"
    wait_for(
        lambda: BrokeredCredential.objects.filter(grant_id=grant_id, attempts__gte=2).exists(),
        what="two failed destroy attempts",
    )
    pending = BrokeredCredential.objects.get(grant_id=grant_id)
    assert pending.state == "destroy_pending" and "cannot be reached" in pending.last_error
    assert credential_state(agent_api, grant_id) == "destroy_pending"  # revocation pending
    assert AuditEvent.objects.filter(grant_id=grant_id, verb="credential.destroy_failed").exists()

    receiver.start()

    wait_for(
        lambda: credential_state(agent_api, grant_id) == "destroyed",
        what="the sweep destroying it once the receiver is back",
    )
    assert receiver.actions("destroy", 204)
    assert not receiver.accounts.live


def test_a_redis_down_at_the_end_leaves_the_revocation_pending_until_it_is_back(
    redis_target, worker, agent_api, privileges
):
    add_broker(
        privileges["read"],
        {"target": "cache", "key_patterns": ["payments:*"], "commands": ["+@read"]},
        kind="redis",
    )
    grant_id = granted(agent_api, "payments-db:read", "task-redis-outage")
    secret = fetch(agent_api, grant_id)
    admin = redis.Redis(port=redis_target.port, username="custody-admin", password=ADMIN_PASSWORD)
    admin.acl_save()  # the user survives the restart below: only Custody can end it
    admin.close()
    redis_target.stop()

    completed = agent_api.post(f"/api/v1/grants/{grant_id}/complete", format="json")

    assert completed.json()["credential"]["state"] == "destroy_pending"
    wait_for(
        lambda: BrokeredCredential.objects.filter(grant_id=grant_id, attempts__gte=2).exists(),
        what="two failed destroy attempts",
    )
    assert "cannot be reached" in BrokeredCredential.objects.get(grant_id=grant_id).last_error
    assert credential_state(agent_api, grant_id) == "destroy_pending"

    redis_target.start()

    wait_for(
        lambda: credential_state(agent_api, grant_id) == "destroyed",
        what=f"the sweep destroying the Redis user:\n{worker.output()[-3000:]}",
    )
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(secret["url"]).ping()
    redis_target.stop()
    redis_target.start()  # and it does not come back from the ACL file
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(secret["url"]).ping()
