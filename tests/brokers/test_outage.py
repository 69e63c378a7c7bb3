"""The target PostgreSQL is down when the grant ends: the credential stays `destroy_pending`,
the API, the web page and the metrics say revocation pending; once it is back, the sweep
destroys it. Asking for a credential while it is down is a 503 that names the cause."""

import os
import uuid

import psycopg
import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from brokers.models import BrokeredCredential
from tests.brokers.conftest import add_broker, admin_execute, role_exists, submit, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def outage_target(own_postgres, privileges):
    target = f"outage_{uuid.uuid4().hex[:8]}"
    variable = f"CUSTODY_BROKER_{target.upper()}_DSN"
    os.environ[variable] = own_postgres.dsn
    admin_execute("CREATE ROLE readers NOLOGIN", dsn=own_postgres.dsn)
    add_broker(privileges["read"], {"target": target, "group_role": "readers"})
    yield own_postgres
    os.environ.pop(variable, None)


def test_a_credential_ended_during_an_outage_is_destroyed_when_the_target_returns(
    agent_api, outage_target, sponsor, admin_user, settings, caplog
):
    settings.CUSTODY_BROKER_ALERT_ATTEMPTS = 1
    grant_id = submit(agent_api).json()["grant"]["id"]
    secret = agent_api.post(f"/api/v1/grants/{grant_id}/credential").json()["secret"]
    session = psycopg.connect(secret["dsn"], autocommit=True)
    assert session.execute("SELECT current_user").fetchone() == (secret["username"],)
    session.close()
    other = submit(agent_api, task_id="task-2").json()["grant"]["id"]

    outage_target.stop()
    unavailable = agent_api.post(f"/api/v1/grants/{other}/credential")
    assert agent_api.post(f"/api/v1/grants/{grant_id}/complete").status_code == 200
    call_command("sweep_credentials")

    assert unavailable.status_code == 503 and int(unavailable["Retry-After"]) >= 1
    assert unavailable.json()["error"]["code"] == "broker_unavailable"
    credential = BrokeredCredential.objects.get(grant_id=grant_id)
    assert credential.state == "destroy_pending" and credential.attempts == 1
    assert credential.last_error.startswith("unavailable:")
    shown = agent_api.get(f"/api/v1/grants/{grant_id}").json()["credential"]
    assert shown["state"] == "destroy_pending" and shown["destroyed_at"] is None
    person = Client()
    person.force_login(sponsor)
    page = person.get(f"/requests/{credential.grant.access_request_id}/").content.decode()
    assert "revocation pending" in page and "1 attempt" in page
    settings.CUSTODY_METRICS_TOKEN = "scraper-secret-0123456789"
    metrics = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scraper-secret-0123456789")
    pending = [
        line
        for line in metrics.content.decode().splitlines()
        if line.startswith("custody_brokered_revocations_pending{")
    ]
    assert pending and all(float(line.rsplit(" ", 1)[1]) >= 1 for line in pending)
    assert (
        AuditEvent.objects.filter(verb="credential.destroy_failed", grant_id=grant_id).count() == 1
    )
    assert AuditEvent.objects.filter(verb="credential.create_failed", grant_id=other).exists()
    assert any(
        record.levelname == "ERROR" and "still not destroyed" in record.getMessage()
        for record in caplog.records
    )
    admin = Client()
    admin.force_login(admin_user)
    summary = admin.get("/admin/brokers/brokeredcredential/").content.decode()
    target = credential.target
    assert f"<td>postgresql</td><td>{target}</td><td>0</td><td>2</td><td>2</td>" in summary

    outage_target.start()
    for row in BrokeredCredential.objects.filter(state="destroy_pending"):
        wait_for(lambda row=row: timezone.now() >= row.next_attempt_at, what="the back-off")
    call_command("sweep_credentials")

    assert set(BrokeredCredential.objects.values_list("state", flat=True)) == {"destroyed"}
    assert not role_exists(secret["username"], dsn=outage_target.dsn)
    assert agent_api.get(f"/api/v1/grants/{grant_id}").json()["credential"]["state"] == (
        "destroyed"
    )
