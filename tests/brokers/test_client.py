"""The Python client's `Grant.credential()` (sync and asyncio) against a live Custody: the
credential once, then Conflict; the role works, and the grant's end (the context manager's
complete) destroys it."""

import asyncio

import psycopg
import pytest
from custody_client import AsyncClient, CallableSvidSource, Client, Conflict
from django.core.management import call_command

from tests.brokers.conftest import role_exists

pytestmark = pytest.mark.django_db(transaction=True)


def test_grant_credential_once_then_conflict(live_server, agent, signer, read_broker):
    svid = CallableSvidSource(lambda audience: signer.mint(agent.spiffe_id, audience=audience))
    with Client(live_server.url, svid, max_poll_seconds=5) as custody:
        with custody.request("payments-db:read", "t-client", "Reconcile", 600) as grant:
            issued = grant.credential()
            with psycopg.connect(issued["secret"]["dsn"]) as session:
                assert session.execute("SELECT count(*) FROM invoices").fetchone() == (2,)
            with pytest.raises(Conflict) as again:
                grant.credential()
            assert again.value.code == "credential_already_delivered"

        async def twin():
            async with (
                AsyncClient(live_server.url, svid, max_poll_seconds=5) as client,
                await client.request("payments-db:read", "t-async", "Reconcile", 600) as g,
            ):
                return await g.credential()

        async_issued = asyncio.run(twin())
    call_command("sweep_credentials")
    assert async_issued["name"] != issued["name"]
    assert not role_exists(issued["name"]) and not role_exists(async_issued["name"])
