"""An agent's grant of a brokered privilege becomes a real PostgreSQL login role: fetched once
through the API, able to read and not to write, destroyed (sessions terminated) when the grant
ends. The password is nowhere in the audit log or the logs."""

import logging

import psycopg
import pytest
from django.core.management import call_command

from audit.models import AuditEvent
from brokers import services
from brokers.base import get_broker
from brokers.models import BrokeredCredential
from tests.brokers.conftest import role_exists, submit
from tests.factories import PrivilegeFactory

pytestmark = pytest.mark.django_db(transaction=True)


def granted(agent_api, task_id="task-1", **extra):
    answer = submit(agent_api, task_id=task_id, **extra)
    assert answer.status_code == 201, answer.content
    grant = answer.json()["grant"]
    assert grant is not None and grant["credential"] is None
    return grant["id"]


def fetch(agent_api, grant_id):
    return agent_api.post(f"/api/v1/grants/{grant_id}/credential", format="json")


def test_it_delivers_a_read_role_once_and_destroys_it_when_the_task_completes(
    agent_api, read_broker, pg_target, caplog
):
    caplog.set_level(logging.DEBUG)
    grant_id = granted(agent_api)

    answer = fetch(agent_api, grant_id)

    assert answer.status_code == 201, answer.content
    assert answer["Cache-Control"] == "no-store"
    body = answer.json()
    secret = body["secret"]
    assert secret["username"] == body["name"] and secret["username"].startswith(
        f"custody_g{grant_id}_"
    )
    assert secret["dbname"] == pg_target["database"]
    session = psycopg.connect(secret["dsn"], autocommit=True)
    assert session.execute("SELECT sum(amount) FROM invoices").fetchone() == (350,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        session.execute("INSERT INTO invoices VALUES (3, 1)")
    again = fetch(agent_api, grant_id)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "credential_already_delivered"
    shown = agent_api.get(f"/api/v1/grants/{grant_id}").json()["credential"]
    assert shown["state"] == "live" and shown["name"] == secret["username"]

    completed = agent_api.post(f"/api/v1/grants/{grant_id}/complete", format="json")

    assert completed.status_code == 200
    assert completed.json()["credential"]["state"] == "destroy_pending"
    call_command("sweep_credentials")
    credential = BrokeredCredential.objects.get(grant_id=grant_id)
    assert credential.state == "destroyed" and credential.destroyed_at is not None
    assert not role_exists(secret["username"])
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")  # the session opened while granted was terminated
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(secret["dsn"], connect_timeout=5).close()
    verbs = list(AuditEvent.objects.filter(grant_id=grant_id).values_list("verb", flat=True))
    assert "credential.issued" in verbs and "credential.destroyed" in verbs
    assert agent_api.get(f"/api/v1/grants/{grant_id}").json()["credential"]["state"] == "destroyed"
    for event in AuditEvent.objects.all():
        assert secret["password"] not in str(event.data)
    assert secret["password"] not in caplog.text


def test_it_refuses_a_credential_for_a_privilege_without_a_broker_or_an_ended_grant(
    agent_api, privileges, read_broker
):
    PrivilegeFactory(resource="crm", action="read", risk="low")
    unbrokered = granted(agent_api, privilege="crm:read", task_id="task-crm")
    brokered = granted(agent_api, task_id="task-2")
    agent_api.post(f"/api/v1/grants/{brokered}/complete", format="json")

    no_broker = fetch(agent_api, unbrokered)
    ended = fetch(agent_api, brokered)
    missing = fetch(agent_api, 999999)

    assert no_broker.status_code == 409
    assert no_broker.json()["error"]["code"] == "no_credential_broker"
    assert ended.status_code == 409 and ended.json()["error"]["code"] == "grant_not_active"
    assert missing.status_code == 404
    assert not BrokeredCredential.objects.exists()


def test_a_brokered_password_is_not_a_custody_token(agent_api, read_broker, api):
    grant_id = granted(agent_api)
    secret = fetch(agent_api, grant_id).json()["secret"]

    for presented in (secret["password"], secret["dsn"]):
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {presented}")
        assert api.get("/api/v1/grants").status_code == 401

    agent_api.post(f"/api/v1/grants/{grant_id}/complete", format="json")
    call_command("sweep_credentials")


def test_a_creation_abandoned_midway_is_destroyed_once_its_lease_runs_out(
    agent_api, agent, read_broker, settings
):
    """A crash between the broker's create and the delivery: the role exists, the agent never
    got it; once the lease is over the sweep destroys it."""
    grant_id = granted(agent_api)
    settings.CUSTODY_BROKER_PROVISION_LEASE_SECONDS = 0
    credential = services._reserve(grant_id=grant_id, agent=agent)
    get_broker("postgresql").create(
        credential.config, name=credential.name, expires_at=credential.expires_at
    )
    assert role_exists(credential.name)
    assert agent_api.get(f"/api/v1/grants/{grant_id}").json()["credential"]["state"] == (
        "provisioning"
    )

    call_command("sweep_credentials")

    assert BrokeredCredential.objects.get(pk=credential.pk).state == "destroyed"
    assert AuditEvent.objects.filter(verb="credential.abandoned", grant_id=grant_id).exists()
    assert not role_exists(credential.name)
    assert fetch(agent_api, grant_id).status_code == 409
