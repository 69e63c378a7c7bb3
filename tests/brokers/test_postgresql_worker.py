"""With a real Celery worker and beat (no test code calling the tasks): whichever way a grant
ends (the agent completes, its sponsor revokes, its time runs out), its PostgreSQL role is
dropped and the session it opened while granted is terminated."""

import psycopg
import pytest
from django.conf import settings
from django.test import Client

from brokers.models import BrokeredCredential
from tests.brokers.conftest import role_exists, submit, wait_for
from tests.workers import Worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def credential_for(agent_api, *, task_id, duration=600):
    grant_id = submit(agent_api, task_id=task_id, duration=duration).json()["grant"]["id"]
    answer = agent_api.post(f"/api/v1/grants/{grant_id}/credential", format="json")
    assert answer.status_code == 201, answer.content
    secret = answer.json()["secret"]
    session = psycopg.connect(secret["dsn"], autocommit=True)
    assert session.execute("SELECT count(*) FROM invoices").fetchone() == (2,)
    return grant_id, secret, session


def test_complete_revoke_and_expiry_each_drop_the_role_and_end_its_session(
    agent_api, read_broker, sponsor
):
    worker = Worker(
        broker_url=settings.CELERY_BROKER_URL, env={"CUSTODY_BROKER_SWEEP_SECONDS": "1"}
    )
    try:
        completed = credential_for(agent_api, task_id="complete")
        revoked = credential_for(agent_api, task_id="revoke")
        expiring = credential_for(agent_api, task_id="expire", duration=4)

        assert agent_api.post(f"/api/v1/grants/{completed[0]}/complete").status_code == 200
        person = Client()
        person.force_login(sponsor)
        assert person.post(f"/grants/{revoked[0]}/revoke/", {"reason": "done"}).status_code == 302

        def all_destroyed():
            states = set(
                BrokeredCredential.objects.filter(
                    grant_id__in=[completed[0], revoked[0], expiring[0]]
                ).values_list("state", flat=True)
            )
            return states == {"destroyed"}

        wait_for(all_destroyed, timeout=90, what=f"destruction\n{worker.output()[-3000:]}")
    finally:
        worker.stop()
    for grant_id, secret, session in (completed, revoked, expiring):
        assert not role_exists(secret["username"])
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(secret["dsn"], connect_timeout=5).close()
        shown = agent_api.get(f"/api/v1/grants/{grant_id}").json()
        assert shown["active"] is False and shown["credential"]["state"] == "destroyed"
    reasons = dict(BrokeredCredential.objects.values_list("grant_id", "grant__revoke_reason"))
    assert reasons == {completed[0]: "completed", revoked[0]: "revoked", expiring[0]: "expired"}
