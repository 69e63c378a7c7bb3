"""SVID sources (a file re-read on change, the SPIFFE Workload API, a callable, the DEBUG-only
development endpoint), the asyncio twin, the decorator, and a grant's end seen by a real
Celery worker."""

import asyncio
import contextlib
import tempfile
from concurrent import futures
from pathlib import Path

import grpc
import jwt
import pytest
from custody_client import (
    AsyncClient,
    Client,
    DevSvidSource,
    Expired,
    FileSvidSource,
    Forbidden,
    InvalidRequest,
    PendingApproval,
    SvidUnavailable,
    WorkloadApiSvidSource,
    requires,
)
from django.conf import settings as django_settings

from approvals.models import Grant
from audit.models import AuditEvent
from tests.client.conftest import Background, approve_when_pending, wait_until
from tests.factories import AgentFactory
from tests.workers import Worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


# --- SVID sources -----------------------------------------------------------------------------


def test_a_file_source_reads_the_svid_again_when_spire_rewrites_it(
    live_server, agent, research_agent, signer, privileges, tmp_path
):
    svid_file = tmp_path / "svid.jwt"
    svid_file.write_text(signer.mint(agent.spiffe_id) + "\n")
    with Client(live_server.url, str(svid_file)) as client:
        assert client.whoami()["spiffe_id"] == agent.spiffe_id
        rotated = signer.mint(research_agent.spiffe_id, ttl=301)  # another size, another file
        svid_file.write_text(rotated)
        assert client.whoami()["spiffe_id"] == research_agent.spiffe_id


def test_a_missing_svid_file_says_where_it_looked(tmp_path):
    with pytest.raises(SvidUnavailable, match="No SVID file at"):
        FileSvidSource(tmp_path / "absent.jwt").svid("custody")


class FakeWorkloadApi:
    """A SPIFFE Workload API on a Unix socket, answering FetchJWTSVID with SVIDs the test's
    trust domain signs (as a SPIRE agent would for the registered workload)."""

    def __init__(self, signer, spiffe_id):
        from spiffe._proto import workload_pb2, workload_pb2_grpc

        self.audiences = []
        outer = self

        class Servicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
            def FetchJWTSVID(self, request, context):  # noqa: N802 (the gRPC method's name)
                outer.audiences.append(list(request.audience))
                token = signer.mint(spiffe_id, audience=list(request.audience))
                return workload_pb2.JWTSVIDResponse(
                    svids=[workload_pb2.JWTSVID(spiffe_id=spiffe_id, svid=token)]
                )

        self.dir = tempfile.mkdtemp(prefix="spire-")
        self.socket = str(Path(self.dir) / "agent.sock")
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(Servicer(), self.server)
        self.server.add_insecure_port(f"unix:{self.socket}")
        self.server.start()

    def stop(self):
        self.server.stop(None)


def test_the_workload_api_source_fetches_svids_for_each_audience(
    live_server, custody, agent, research_agent, signer
):
    spire = FakeWorkloadApi(signer, research_agent.spiffe_id)
    try:
        source = WorkloadApiSvidSource(spire.socket)
        with Client(live_server.url, source) as sub_agent:
            assert sub_agent.whoami()["spiffe_id"] == research_agent.spiffe_id
            grant = custody.request("payments-db:read", "t-spire", "Reconcile", 600)
            delegation = grant.delegate(sub_agent.actor_token(), intent="Rows", duration=60)
            assert not delegation.pending
        assert spire.audiences == [["custody"], [django_settings.CUSTODY_DELEGATION_AUDIENCE]]
        source.close()
    finally:
        spire.stop()


def test_the_workload_api_source_needs_a_socket(monkeypatch):
    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET", raising=False)
    with pytest.raises(SvidUnavailable, match="SPIFFE_ENDPOINT_SOCKET"):
        WorkloadApiSvidSource()


def test_the_dev_source_mints_through_a_debug_custody(live_server, settings, privileges, tmp_path):
    settings.DEBUG = True
    settings.CUSTODY_DEV_KEY_FILE = tmp_path / "dev.pem"
    bot = "spiffe://dev.custody.internal/agents/dev-bot"
    source = DevSvidSource(live_server.url, bot)
    svid = source.svid("custody")
    assert claims(svid)["sub"] == bot and claims(svid)["aud"] == ["custody"]
    actor = source.svid(django_settings.CUSTODY_DELEGATION_AUDIENCE)
    assert claims(actor)["aud"] == [django_settings.CUSTODY_DELEGATION_AUDIENCE]
    from agents.models import TrustDomain

    AgentFactory(spiffe_id=bot, name="Dev bot")
    assert TrustDomain.objects.filter(name="dev.custody.internal").exists()
    with Client(live_server.url, source) as client:
        assert client.whoami()["name"] == "Dev bot"
    with pytest.raises(InvalidRequest) as foreign:
        DevSvidSource(live_server.url, "spiffe://example.test/agents/x").svid("custody")
    assert foreign.value.code == "invalid_spiffe_id"
    with pytest.raises(InvalidRequest) as audience:
        DevSvidSource(live_server.url, bot).svid("payments-db")
    assert audience.value.code == "invalid_audience"


def test_the_dev_endpoint_is_refused_with_debug_off(live_server, privileges):
    with pytest.raises(Forbidden) as refused:
        DevSvidSource(live_server.url, "spiffe://dev.custody.internal/agents/x").svid("custody")
    assert refused.value.code == "dev_only" and refused.value.status == 403
    assert "DEBUG off" in refused.value.message


# --- the asyncio twin -------------------------------------------------------------------------


def test_the_async_client_does_what_the_sync_one_does(
    live_server, agent, research_agent, sponsor, svid_for, privileges
):
    async def scenario():
        async with (
            AsyncClient(live_server.url, svid_for(agent), max_poll_seconds=5) as client,
            AsyncClient(live_server.url, svid_for(research_agent)) as sub_agent,
        ):
            assert (await client.whoami())["spiffe_id"] == agent.spiffe_id
            assert {e["privilege"] for e in await client.eligibility()} >= {"payments-db:read"}
            assert "payments-db:read" in {p["privilege"] for p in await client.privileges()}
            async with await client.request("payments-db:read", "t-async", "Reconcile", 600) as g:
                first = await g.token()
                assert claims(first)["grant_id"] == g.id
                assert claims(await g.refresh())["jti"] != claims(first)["jti"]
                await g.record_tool_call("sql", target="payments-db/invoices", action="read")
                delegation = await g.delegate(await sub_agent.actor_token(), intent="Rows")
                held = await sub_agent.grant(delegation.grant_id)
                assert claims(await held.token())["act"]["sub"] == research_agent.spiffe_id
                assert [x["id"] for x in await client.grants(active=True)] == [g.id]
            with pytest.raises(PendingApproval) as pending:
                await client.request("payments-api:refund", "t-async-2", "Refund", 300, wait=False)
            request_id = pending.value.request_id
            assert (await client.get_request(request_id))["status"] == "pending"
            asking = asyncio.ensure_future(client.wait_for(request_id))
            await asyncio.to_thread(
                lambda: Background(
                    lambda: approve_when_pending(sponsor, privilege="payments-api:refund")
                ).result()
            )
            refund = await asking
            longer = asyncio.ensure_future(refund.extend(120, intent="A second order"))
            await asyncio.to_thread(
                lambda: Background(
                    lambda: approve_when_pending(sponsor, privilege="payments-api:refund")
                ).result()
            )
            extension = await longer
            await extension.complete()
            with pytest.raises(PendingApproval) as third:
                await client.request("payments-api:refund", "t-async-3", "Refund", 300, wait=0)
            assert (await client.cancel(third.value.request_id))["status"] == "cancelled"
            return g.id

    grant_id = asyncio.run(scenario())
    assert Grant.objects.get(pk=grant_id).revoke_reason == "completed"


def test_the_async_context_manager_records_a_failure(live_server, agent, svid_for, privileges):
    async def scenario():
        async with AsyncClient(live_server.url, svid_for(agent)) as client:
            grant = await client.request("payments-db:read", "t-async-boom", "Reconcile", 600)
            with contextlib.suppress(KeyError):
                async with grant:
                    raise KeyError("row 7")
            return grant.id

    grant_id = asyncio.run(scenario())
    failure = AuditEvent.objects.get(grant_id=grant_id, verb="tool.called")
    assert failure.data["detail"] == {"exception": "KeyError", "message": "'row 7'"}
    assert Grant.objects.get(pk=grant_id).revoke_reason == "completed"


# --- the decorator ----------------------------------------------------------------------------


def test_requires_runs_the_function_under_a_grant_and_completes_it(custody):
    seen = {}

    @requires("payments-db:read", intent="Reconcile invoices", duration="5m", client=custody)
    def reconcile(month, *, grant):
        seen["grant"] = grant
        grant.record_tool_call("sql", target=f"payments-db/{month}", action="read")
        return f"reconciled {month}"

    assert reconcile("2026-11") == "reconciled 2026-11"
    grant = Grant.objects.get(pk=seen["grant"].id)
    assert grant.revoke_reason == "completed" and grant.task_id.startswith("reconcile-")
    assert grant.access_request.intent["justification"] == "Reconcile invoices"


def test_requires_on_an_async_function_from_the_environment(
    live_server, agent, signer, privileges, tmp_path, monkeypatch
):
    svid_file = tmp_path / "svid.jwt"
    svid_file.write_text(signer.mint(agent.spiffe_id))
    monkeypatch.setenv("CUSTODY_URL", live_server.url)
    monkeypatch.setenv("CUSTODY_SVID_FILE", str(svid_file))
    from custody_client import decorators

    monkeypatch.setattr(decorators, "_default", {})

    @requires("payments-db:read", intent="Export", task_id="t-export")
    async def export():
        return "exported"

    @requires("payments-db:read", intent="Export", task_id="t-export-2")
    def export_fails():
        raise RuntimeError("disk full")

    assert asyncio.run(export()) == "exported"
    with pytest.raises(RuntimeError):
        export_fails()
    assert Grant.objects.get(task_id="t-export").revoke_reason == "completed"
    failed = Grant.objects.get(task_id="t-export-2")
    assert failed.revoke_reason == "completed"
    assert AuditEvent.objects.get(grant_id=failed.pk, verb="tool.called").data["outcome"] == (
        "failure"
    )


# --- a grant's end, with a real worker --------------------------------------------------------


def test_a_grant_that_ran_out_raises_expired_and_the_block_ends_quietly(custody):
    worker = Worker(broker_url=django_settings.CELERY_BROKER_URL)
    try:
        with custody.request("payments-db:read", "t-short", "Reconcile", 2) as grant:
            assert claims(grant.access_token)["grant_id"] == grant.id
            ended = wait_until(
                lambda: Grant.objects.filter(pk=grant.id, revoke_reason="expired").exists(),
                timeout=15,
            )
            assert ended, worker.output()[-3000:]
            with pytest.raises(Expired) as expired:
                grant.refresh()
            assert expired.value.code == "grant_expired"
            with pytest.raises(Expired):
                grant.record_tool_call("sql", target="payments-db")
    finally:
        worker.stop()
    assert AuditEvent.objects.filter(grant_id=grant.id, verb="grant.expired").count() == 1


def test_a_file_source_names_a_file_per_audience(
    live_server, custody, research_agent, signer, tmp_path
):
    """spiffe-helper writes one file per audience: the login, and the actor token."""
    login, actor = tmp_path / "svid.jwt", tmp_path / "actor.jwt"
    login.write_text(signer.mint(research_agent.spiffe_id))
    actor.write_text(
        signer.mint(research_agent.spiffe_id, audience=django_settings.CUSTODY_DELEGATION_AUDIENCE)
    )
    source = FileSvidSource(login, paths={django_settings.CUSTODY_DELEGATION_AUDIENCE: actor})
    with Client(live_server.url, source) as sub_agent:
        grant = custody.request("payments-db:read", "t-files", "Reconcile", 600)
        delegation = grant.delegate(sub_agent.actor_token(), intent="Rows", duration=60)
        assert claims(sub_agent.grant(delegation.grant_id).access_token)["grant_id"] == (
            delegation.grant_id
        )
