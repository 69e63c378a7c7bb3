"""The DEBUG-only dev SVID endpoint's first calls at once (PostgreSQL, threads through the live
server): one development key, one trust domain, and every minted SVID logs in."""

import threading

import httpx
import pytest

from agents.models import TrustDomain
from audit.models import AuditEvent
from tests.factories import AgentFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CALLERS = 8


def test_first_mints_at_once_share_one_key_and_one_trust_domain(
    live_server, settings, privileges, tmp_path
):
    settings.DEBUG = True
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev.pem"  # no key yet: every caller may make one
    bot = "spiffe://dev.custody.internal/agents/dev-bot"
    AgentFactory(spiffe_id=bot, name="Dev bot")
    start = threading.Barrier(CALLERS)
    answers = [None] * CALLERS

    def mint(index):
        start.wait()
        answers[index] = httpx.post(
            f"{live_server.url}/api/v1/dev/svid", json={"spiffe_id": bot}, timeout=60
        )

    threads = [threading.Thread(target=mint, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert [answer.status_code for answer in answers] == [201] * CALLERS
    assert TrustDomain.objects.filter(name="dev.custody.internal").count() == 1
    for answer in answers:
        me = httpx.get(
            f"{live_server.url}/api/v1/agents/me",
            headers={"Authorization": f"Bearer {answer.json()['svid']}"},
        )
        assert me.status_code == 200, me.text
    assert AuditEvent.objects.filter(verb="trust_domain.keys_updated").count() == 1
