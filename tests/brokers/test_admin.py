"""Admins name a privilege's broker: the broker validates the configuration (the message on the
field, nothing saved), every change is evidence, and admin shows which environment variables a
target needs and whether they are set, never their values; the credentials' page sums up each
target."""

import json
import os

import pytest

from audit.models import AuditEvent
from brokers.models import PrivilegeBroker

pytestmark = pytest.mark.django_db


def add(client, privilege, config, kind="postgresql"):
    return client.post(
        "/admin/brokers/privilegebroker/add/",
        {
            "privilege": privilege.pk,
            "kind": kind,
            "config": json.dumps(config),
            "enabled": "on",
        },
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"group_role": "payments_read"}, "target must be a short lowercase name"),
        ({"target": "Payments DB", "group_role": "payments_read"}, "target must be"),
        ({"target": "payments_db"}, "group_role must name an existing PostgreSQL role"),
        ({"target": "payments_db", "group_role": "x; DROP"}, "group_role must name"),
        (
            {"target": "payments_db", "group_role": "r", "connection_limit": 50},
            "connection_limit must be a whole number from 1 to 20",
        ),
        ({"target": "payments_db", "group_role": "r", "password": "x"}, "Unknown field(s)"),
    ],
)
def test_a_bad_configuration_is_refused_on_the_field_and_nothing_is_saved(
    client, admin_user, privileges, config, message
):
    client.force_login(admin_user)

    response = add(client, privileges["read"], config)

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not PrivilegeBroker.objects.exists()
    assert not AuditEvent.objects.filter(verb="broker.configured").exists()


def test_a_missing_group_role_is_refused_when_the_target_is_reachable(
    client, admin_user, privileges, pg_target
):
    client.force_login(admin_user)

    response = add(
        client, privileges["read"], {"target": pg_target["target"], "group_role": "nope"}
    )

    assert "does not exist on the target" in response.content.decode()
    assert not PrivilegeBroker.objects.exists()


def test_it_saves_a_broker_with_evidence_and_shows_its_variables_not_their_values(
    client, admin_user, privileges, pg_target
):
    client.force_login(admin_user)

    response = add(
        client,
        privileges["read"],
        {"target": pg_target["target"], "group_role": pg_target["group_role"]},
    )
    unset = add(client, privileges["write"], {"target": "not_deployed", "group_role": "writers"})

    assert response.status_code == 302 and unset.status_code == 302
    broker = PrivilegeBroker.objects.get(privilege=privileges["read"])
    assert broker.config == {
        "target": pg_target["target"],
        "group_role": pg_target["group_role"],
        "connection_limit": 2,
    }
    event = AuditEvent.objects.filter(verb="broker.configured").first()
    assert event.data["privilege"] == "payments-db:read"
    page = client.get("/admin/brokers/privilegebroker/").content.decode()
    variable = f"CUSTODY_BROKER_{pg_target['target'].upper()}_DSN"
    assert f"{variable} (set" in page
    assert "CUSTODY_BROKER_NOT_DEPLOYED_DSN (NOT SET" in page
    assert os.environ[variable] not in page


def test_the_credentials_page_sums_up_each_target(client, admin_user, db):
    client.force_login(admin_user)

    page = client.get("/admin/brokers/brokeredcredential/")

    assert page.status_code == 200
    assert "No credential is live or waiting to be destroyed." in page.content.decode()
