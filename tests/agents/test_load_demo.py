import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from agents.models import Agent

pytestmark = pytest.mark.django_db


def test_load_demo_registers_a_resource_server_that_may_introspect_payments_tokens(
    settings, tmp_path
):
    settings.DEBUG = True  # the demo's agents belong to the development trust domain
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev_trust_domain_key.pem"
    call_command("load_demo", force=True)
    call_command("load_demo", force=True)  # idempotent
    gateway = Agent.objects.get(kind=Agent.Kind.RESOURCE_SERVER)
    assert gateway.spiffe_id.endswith("/resource-servers/payments-gateway")
    assert gateway.introspection_audiences == ["payments-db", "payments-api"]
    assert gateway.may_introspect("payments-db") and not gateway.may_introspect("crm")
    assert Agent.objects.filter(kind=Agent.Kind.AGENT).count() == 6


def test_load_demo_shows_an_orphan_and_a_dormant_agent_on_the_dashboard(settings, tmp_path):
    from audit.models import AuditEvent
    from tests.factories import UserFactory

    settings.DEBUG = True
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev_trust_domain_key.pem"
    call_command("load_demo", force=True)
    call_command("load_demo", force=True)  # idempotent: flagged once each
    orphan = Agent.objects.get(name="Reporting bot")
    dormant = Agent.objects.get(name="Nightly export")
    assert orphan.orphan_reason == Agent.OrphanReason.SPONSOR_INACTIVE
    assert dormant.dormant_at is not None
    assert AuditEvent.objects.filter(verb="agent.orphaned").count() == 1
    assert AuditEvent.objects.filter(verb="agent.dormant").count() == 1
    client = Client()
    client.force_login(UserFactory(username="viewer", is_superuser=True))
    dashboard = client.get("/").content.decode()
    orphans = dashboard[dashboard.index('id="orphans"') :]
    assert "Reporting bot" in orphans[: orphans.index("</ul>")]
    quiet = dashboard[dashboard.index('id="dormant"') :]
    assert "Nightly export" in quiet[: quiet.index("</ul>")]
    assert AuditEvent.objects.filter(verb="review.opened").count() == 1
    alice = Client()
    alice.force_login(get_user_model().objects.get(username="alice"))
    waiting = alice.get("/").content.decode()
    waiting = waiting[waiting.index('id="reviews-waiting"') :]
    assert "Invoice bot" in waiting[: waiting.index("</ul>")]


def test_load_demo_prints_every_demo_login_for_make_run(settings, tmp_path):
    settings.DEBUG = True
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev_trust_domain_key.pem"
    out = io.StringIO()
    call_command("load_demo", "--print-logins", stdout=out)
    for username in ("admin", "alice", "bob", "carol", "dave", "erin"):
        assert f"{username} / custody-{username}" in out.getvalue()
    signed_in = Client().post("/login/", {"username": "dave", "password": "custody-dave"})
    assert signed_in.status_code == 302
