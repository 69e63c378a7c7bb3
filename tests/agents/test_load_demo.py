import pytest
from django.core.management import call_command

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
    assert Agent.objects.filter(kind=Agent.Kind.AGENT).count() == 4
