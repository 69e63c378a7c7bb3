"""`Client` and `AsyncClient`: an agent asks Custody for a privilege and works under the `Grant`.

client = Client("https://custody.example.com", FileSvidSource("/run/spire/svid.jwt"))
with client.request("payments-db:write", task_id="t-42", intent="Fix 3 invoices",
                    duration="10m") as grant:
    db.connect(password=grant.access_token)        # refreshed before it expires
    grant.record_tool_call("sql", target="payments-db/invoices", action="write")
# completed on exit; an exception is recorded as a failed call first
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import httpx

from custody_client import _ops
from custody_client._ops import Answer, Call, Delegation, Sleep
from custody_client.errors import (
    CustodyError,
    Expired,
    GrantEnded,
    RateLimited,
    Unavailable,
    from_response,
    retry_after_seconds,
)
from custody_client.svid import DevSvidSource, FileSvidSource, as_source, token_times

__all__ = ["AsyncClient", "AsyncGrant", "Client", "Delegation", "Grant", "Retry"]

USER_AGENT = "custody-client/0.1"
# Nothing a connection could have half-done: the request never reached Custody.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass
class Retry:
    """Retries with exponential backoff and jitter. 429 and 503 are retried for every call
    (Custody wrote nothing), after `Retry-After` when given, unless it asks for longer than
    `max_retry_after`; other 5xx and dropped connections only for calls safe to repeat."""

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 30.0

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)

    def after_error(self, error: CustodyError, call: Call, attempt: int) -> float | None:
        if attempt + 1 >= self.attempts:
            return None
        if (isinstance(error, RateLimited) or error.status == 503) and call.retry_refusals:
            wait = error.retry_after if error.retry_after is not None else self._backoff(attempt)
            return wait if wait <= self.max_retry_after else None
        if error.status >= 500 and call.idempotent:
            return self._backoff(attempt)
        return None

    def after_transport(self, exc: Exception, call: Call, attempt: int) -> float | None:
        if attempt + 1 >= self.attempts:
            return None
        if isinstance(exc, _NOT_SENT) or call.idempotent:
            return self._backoff(attempt)
        return None


def _parse_time(value) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _answer(response: httpx.Response) -> Answer:
    try:
        body = response.json() if response.content else {}
    except ValueError:
        body = {}
    return Answer(response.status_code, dict(response.headers), body)


def _error(response: httpx.Response) -> CustodyError:
    answer = _answer(response)
    error = from_response(answer.status, answer.body, response.headers)
    if error.retry_after is None:
        error.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    return error


class _Base:
    def __init__(
        self,
        base_url: str,
        svid_source,
        *,
        audience: str = "custody",
        delegation_audience: str | None = None,
        timeout: float = 15.0,
        retry: Retry | None = None,
        refresh_margin: float = 30.0,
        max_poll_seconds: int = 25,
    ):
        self.base_url = base_url.rstrip("/")
        self.svid_source = as_source(svid_source)
        self.audience = audience
        self.delegation_audience = delegation_audience or f"{audience}-delegation"
        self.timeout = timeout
        self.retry = retry or Retry()
        self.refresh_margin = refresh_margin
        self.max_poll_seconds = max_poll_seconds

    @classmethod
    def from_env(cls, **overrides):
        """CUSTODY_URL (default http://127.0.0.1:8000), and the SVID from CUSTODY_SVID_FILE,
        the Workload API (SPIFFE_ENDPOINT_SOCKET) or, for development, CUSTODY_DEV_AGENT."""
        url = overrides.pop("base_url", None) or os.environ.get(
            "CUSTODY_URL", "http://127.0.0.1:8000"
        )
        source = overrides.pop("svid_source", None)
        if source is None:
            if os.environ.get("CUSTODY_SVID_FILE"):
                source = FileSvidSource(os.environ["CUSTODY_SVID_FILE"])
            elif os.environ.get("CUSTODY_DEV_AGENT"):
                source = DevSvidSource(url, os.environ["CUSTODY_DEV_AGENT"])
            elif os.environ.get("SPIFFE_ENDPOINT_SOCKET"):
                from custody_client.svid import WorkloadApiSvidSource

                source = WorkloadApiSvidSource()
            else:
                raise CustodyError(
                    "No SVID: set CUSTODY_SVID_FILE, SPIFFE_ENDPOINT_SOCKET or (development) "
                    "CUSTODY_DEV_AGENT.",
                    code="no_svid",
                )
        overrides.setdefault("audience", os.environ.get("CUSTODY_AUDIENCE", "custody"))
        return cls(url, source, **overrides)

    def _request_kwargs(self, call: Call) -> dict:
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, call.read_timeout or 0))
        return {
            "method": call.method,
            "url": f"{self.base_url}{call.path}",
            "json": call.json,
            "params": call.params,
            "timeout": timeout,
        }

    def _grant_from(self, grant_cls, request: dict, token: str | None):
        grant = request.get("grant") or {}
        return grant_cls(
            self,
            grant_id=grant["id"],
            privilege=grant.get("scope") or request.get("privilege"),
            task_id=request.get("task_id"),
            expires_at=_parse_time(grant.get("expires_at")),
            request_id=request.get("id"),
            intent=request.get("intent"),
            access_token=token,
        )

    def _grant_from_listing(self, grant_cls, listed: dict):
        return grant_cls(
            self,
            grant_id=listed["id"],
            privilege=listed.get("scope") or listed.get("privilege"),
            task_id=listed.get("task_id"),
            expires_at=_parse_time(listed.get("expires_at")),
            request_id=listed.get("request_id"),
        )


class _GrantBase:
    """What a grant knows; the sync and async grants add the calls."""

    def __init__(
        self,
        client,
        *,
        grant_id: int,
        privilege: str,
        task_id: str | None,
        expires_at: datetime | None,
        request_id: int | None = None,
        intent: dict | None = None,
        access_token: str | None = None,
    ):
        self.client = client
        self.id = grant_id
        self.privilege = privilege
        self.task_id = task_id
        self.expires_at = expires_at
        self.request_id = request_id
        self.intent = intent or {}
        self._token = access_token

    def __repr__(self) -> str:
        return f"<{type(self).__name__} #{self.id} {self.privilege} task={self.task_id}>"

    def _token_fresh(self) -> bool:
        """True while the token needs no refresh: more than the margin left (a quarter of its
        lifetime for short tokens), or it already runs to the grant's end and is still valid."""
        if not self._token:
            return False
        token_claims = token_times(self._token)
        exp, iat = token_claims.get("exp", 0), token_claims.get("iat", 0)
        now = time.time()
        if self.expires_at and exp >= self.expires_at.timestamp():
            return now < exp
        margin = min(self.client.refresh_margin, max(exp - iat, 0) / 4)
        return exp - now > margin

    def _ended(self, error: CustodyError) -> CustodyError:
        """A refused refresh of a grant whose time ran out is `Expired`."""
        if (
            isinstance(error, GrantEnded)
            and self.expires_at
            and self.expires_at.timestamp() <= time.time()
        ):
            expired = Expired(
                f"Grant #{self.id} expired at {self.expires_at.isoformat()}.",
                code="grant_expired",
                status=error.status,
                body=error.body,
            )
            expired.__cause__ = error
            return expired
        return error

    def _delegation_call(self, token, actor_token, intent, scope, duration, task_id, context):
        body = _ops.delegation_body(
            access_token=token,
            actor_token=actor_token,
            intent=intent,
            privilege=self.privilege,
            scope=scope,
            duration=duration,
            task_id=task_id,
            context=context,
        )
        return Call("POST", "/api/v1/token", json=body, retry_refusals=False)

    @staticmethod
    def _failure(exc: BaseException) -> dict:
        return {
            "tool": "task",
            "target": "",
            "outcome": "failure",
            "detail": {"exception": type(exc).__name__, "message": str(exc)[:500]},
        }


# --- sync -----------------------------------------------------------------------------------


class Client(_Base):
    """An agent's connection to Custody. Thread-safe; close it (or use it as a context manager)
    to release its connections. `svid_source` is a source, a callable `audience -> SVID`, or
    the path of an SVID file."""

    def __init__(self, base_url: str, svid_source, *, http: httpx.Client | None = None, **kwargs):
        super().__init__(base_url, svid_source, **kwargs)
        self._http = http or httpx.Client(headers={"User-Agent": USER_AGENT})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # The driver: one place where calls meet the network, with the retries.
    def _send(self, call: Call) -> Answer:
        attempt = 0
        while True:
            try:
                headers = {"Authorization": f"Bearer {self.svid_source.svid(self.audience)}"}
                response = self._http.request(**self._request_kwargs(call), headers=headers)
            except httpx.TransportError as exc:
                delay = self.retry.after_transport(exc, call, attempt)
                if delay is None:
                    raise Unavailable(
                        f"Custody at {self.base_url} could not be reached: {exc}",
                        code="unreachable",
                    ) from exc
            else:
                if response.status_code < 400:
                    return _answer(response)
                error = _error(response)
                delay = self.retry.after_error(error, call, attempt)
                if delay is None:
                    raise error
            time.sleep(delay)
            attempt += 1

    def _run(self, operation):
        try:
            step = next(operation)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = operation.send(None)
                else:
                    step = operation.send(self._send(step))
        except StopIteration as done:
            return done.value

    def _get(self, path: str, **params) -> dict:
        return self._send(Call("GET", path, params=params or None, idempotent=True)).body

    def whoami(self) -> dict:
        """The calling agent as Custody knows it: SPIFFE ID, name, status, sponsor, team."""
        return self._get("/api/v1/agents/me")

    def request(
        self,
        privilege: str,
        task_id: str,
        intent,
        duration,
        *,
        wait=True,
        context: dict | None = None,
    ) -> Grant:
        """Ask for `privilege` for `duration` (seconds, a timedelta or '30m') on `task_id`,
        stating `intent` (a sentence, or {'action', 'target', 'justification'}). Blocks on the
        long poll while people decide: `wait=True` until they do, a number of seconds at most
        (then `PendingApproval`), `False` not at all. Raises `Denied`/`NotEligible`/`Expired`."""
        request, token = self._run(
            _ops.submit(
                privilege=privilege,
                task_id=task_id,
                intent=intent,
                duration=duration,
                context=context,
                wait=wait,
                max_poll=self.max_poll_seconds,
            )
        )
        return self._grant_from(Grant, request, token)

    def wait_for(self, request_id: int, *, wait=True) -> Grant:
        """Resume waiting on a request (after `PendingApproval`, or a delegation's 202)."""
        request, token = self._run(
            _ops.resume(request_id=request_id, wait=wait, max_poll=self.max_poll_seconds)
        )
        return self._grant_from(Grant, request, token)

    def get_request(self, request_id: int) -> dict:
        """The request as Custody shows it to its agent: status, decision, approvals."""
        return self._get(f"/api/v1/requests/{request_id}")

    def cancel(self, request_id: int) -> dict:
        return self._send(Call("POST", f"/api/v1/requests/{request_id}/cancel")).body

    def grants(self, *, active: bool | None = None) -> list[dict]:
        """The agent's grants, newest first (`active=True`: only live ones)."""
        params = {} if active is None else {"active": "true" if active else "false"}
        return self._get("/api/v1/grants", **params)["results"]

    def grant(self, grant_id: int) -> Grant:
        """A grant of this agent, to get its token or end it (e.g. one delegated to it)."""
        return self._grant_from_listing(Grant, self._get(f"/api/v1/grants/{grant_id}"))

    def eligibility(self) -> list[dict]:
        """What the agent may ask for at all, with each privilege's longest duration."""
        return self._get("/api/v1/eligibility")["results"]

    def privileges(self, *, eligible: bool | None = None) -> list[dict]:
        """The privilege catalogue, each entry with this agent's eligibility."""
        params = {} if eligible is None else {"eligible": "true" if eligible else "false"}
        return self._get("/api/v1/privileges", **params)["results"]

    def actor_token(self) -> str:
        """This agent's consent to one delegation: a JWT-SVID for the delegation audience, to
        hand to the agent that delegates to it (`Grant.delegate(actor_token=…)`). Single use."""
        return self.svid_source.svid(self.delegation_audience)


class _SyncAuth(httpx.Auth):
    def __init__(self, grant: Grant):
        self.grant = grant

    def auth_flow(self, request):
        request.headers["Authorization"] = f"Bearer {self.grant.access_token}"
        yield request


class Grant(_GrantBase):
    """A privilege in force. `access_token` is always fresh (refreshed shortly before it
    expires). As a context manager it completes the grant on exit, and records a failed call
    first when the block raised."""

    client: Client

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    @property
    def access_token(self) -> str:
        with self._lock:
            if not self._token_fresh():
                self._refresh_locked()
            return self._token

    def token(self) -> str:
        return self.access_token

    def refresh(self) -> str:
        """A new token now (policy is evaluated again)."""
        with self._lock:
            self._refresh_locked()
            return self._token

    def _refresh_locked(self) -> None:
        try:
            self._token = self.client._send(_ops.token_call(self.id)).body["access_token"]
        except GrantEnded as error:
            raise self._ended(error) from error

    @property
    def auth(self) -> httpx.Auth:
        """For httpx: `httpx.get(url, auth=grant.auth)` sends the fresh token."""
        return _SyncAuth(self)

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.access_token}"}

    def record_tool_call(
        self,
        tool: str,
        *,
        target: str = "",
        outcome: str = "success",
        action: str = "",
        detail=None,
    ) -> dict:
        """Evidence of a tool call under the grant; the answer says whether it drifted from the
        intent (`drift`)."""
        body = _ops.tool_call_body(tool, target, outcome, action, detail)
        try:
            return self.client._send(
                Call("POST", f"/api/v1/grants/{self.id}/tool-calls", body)
            ).body
        except GrantEnded as error:
            raise self._ended(error) from error

    def credential(self) -> dict:
        """The grant's real credential on a brokered system (e.g. a PostgreSQL role): made now,
        delivered once (`secret`: username, password, dsn, ...), destroyed when the grant ends.
        A second call raises Conflict (`credential_already_delivered`): keep it in memory."""
        try:
            return self.client._send(_ops.credential_call(self.id)).body
        except GrantEnded as error:
            raise self._ended(error) from error

    def complete(self) -> dict:
        """The task is done: the grant (and everything delegated from it) ends now."""
        try:
            return self.client._send(Call("POST", f"/api/v1/grants/{self.id}/complete")).body
        except GrantEnded as error:
            raise self._ended(error) from error

    def extend(self, duration, *, intent=None, wait=True, context: dict | None = None) -> Grant:
        """More time: a new request linked to this grant, decided like any other; returns the
        new grant."""
        request, token = self.client._run(
            _ops.extend(
                grant_id=self.id,
                privilege=self.privilege,
                duration=duration,
                intent=intent or self.intent or "More time for the same task.",
                context=context,
                wait=wait,
                max_poll=self.client.max_poll_seconds,
            )
        )
        return self.client._grant_from(Grant, request, token)

    def delegate(
        self,
        actor_token: str,
        *,
        intent,
        scope: str | None = None,
        duration=None,
        task_id: str = "",
        context: dict | None = None,
    ) -> Delegation:
        """Hand a narrower grant to a sub-agent (RFC 8693 token exchange). `actor_token` is
        the sub-agent's `Client.actor_token()`; `scope` defaults to this grant's privilege,
        `duration` to what is left, `task_id` to this task (or `<task>/<sub-task>`)."""
        call = self._delegation_call(
            self.access_token, actor_token, intent, scope, duration, task_id, context
        )
        return Delegation.from_answer(self.client._send(call))

    def __enter__(self) -> Grant:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc is not None:
            # The task's own exception is the one to see, not a refusal to record it.
            with contextlib.suppress(CustodyError):
                self.client._send(
                    Call("POST", f"/api/v1/grants/{self.id}/tool-calls", self._failure(exc))
                )
        try:
            self.complete()
        except (GrantEnded, Expired):
            pass  # already over: what completing wanted
        except CustodyError:
            if exc is None:
                raise


# --- async ----------------------------------------------------------------------------------


class AsyncClient(_Base):
    """The asyncio twin of `Client`: the same calls, awaited."""

    def __init__(
        self, base_url: str, svid_source, *, http: httpx.AsyncClient | None = None, **kwargs
    ):
        super().__init__(base_url, svid_source, **kwargs)
        self._http = http or httpx.AsyncClient(headers={"User-Agent": USER_AGENT})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def _send(self, call: Call) -> Answer:
        attempt = 0
        while True:
            try:
                # Sources may block (a file, the Workload API): off the event loop.
                svid = await asyncio.to_thread(self.svid_source.svid, self.audience)
                response = await self._http.request(
                    **self._request_kwargs(call), headers={"Authorization": f"Bearer {svid}"}
                )
            except httpx.TransportError as exc:
                delay = self.retry.after_transport(exc, call, attempt)
                if delay is None:
                    raise Unavailable(
                        f"Custody at {self.base_url} could not be reached: {exc}",
                        code="unreachable",
                    ) from exc
            else:
                if response.status_code < 400:
                    return _answer(response)
                error = _error(response)
                delay = self.retry.after_error(error, call, attempt)
                if delay is None:
                    raise error
            await asyncio.sleep(delay)
            attempt += 1

    async def _run(self, operation):
        try:
            step = next(operation)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = operation.send(None)
                else:
                    step = operation.send(await self._send(step))
        except StopIteration as done:
            return done.value

    async def _get(self, path: str, **params) -> dict:
        return (await self._send(Call("GET", path, params=params or None, idempotent=True))).body

    async def whoami(self) -> dict:
        return await self._get("/api/v1/agents/me")

    async def request(
        self, privilege: str, task_id: str, intent, duration, *, wait=True, context=None
    ) -> AsyncGrant:
        request, token = await self._run(
            _ops.submit(
                privilege=privilege,
                task_id=task_id,
                intent=intent,
                duration=duration,
                context=context,
                wait=wait,
                max_poll=self.max_poll_seconds,
            )
        )
        return self._grant_from(AsyncGrant, request, token)

    async def wait_for(self, request_id: int, *, wait=True) -> AsyncGrant:
        request, token = await self._run(
            _ops.resume(request_id=request_id, wait=wait, max_poll=self.max_poll_seconds)
        )
        return self._grant_from(AsyncGrant, request, token)

    async def get_request(self, request_id: int) -> dict:
        return await self._get(f"/api/v1/requests/{request_id}")

    async def cancel(self, request_id: int) -> dict:
        return (await self._send(Call("POST", f"/api/v1/requests/{request_id}/cancel"))).body

    async def grants(self, *, active: bool | None = None) -> list[dict]:
        params = {} if active is None else {"active": "true" if active else "false"}
        return (await self._get("/api/v1/grants", **params))["results"]

    async def grant(self, grant_id: int) -> AsyncGrant:
        return self._grant_from_listing(AsyncGrant, await self._get(f"/api/v1/grants/{grant_id}"))

    async def eligibility(self) -> list[dict]:
        return (await self._get("/api/v1/eligibility"))["results"]

    async def privileges(self, *, eligible: bool | None = None) -> list[dict]:
        params = {} if eligible is None else {"eligible": "true" if eligible else "false"}
        return (await self._get("/api/v1/privileges", **params))["results"]

    async def actor_token(self) -> str:
        return await asyncio.to_thread(self.svid_source.svid, self.delegation_audience)


class _AsyncAuth(httpx.Auth):
    def __init__(self, grant: AsyncGrant):
        self.grant = grant

    async def async_auth_flow(self, request):
        request.headers["Authorization"] = f"Bearer {await self.grant.token()}"
        yield request


class AsyncGrant(_GrantBase):
    """The asyncio twin of `Grant`: `await grant.token()` is always fresh; `async with`
    completes it."""

    client: AsyncClient

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if not self._token_fresh():
                await self._refresh_locked()
            return self._token

    async def refresh(self) -> str:
        async with self._lock:
            await self._refresh_locked()
            return self._token

    async def _refresh_locked(self) -> None:
        try:
            self._token = (await self.client._send(_ops.token_call(self.id))).body["access_token"]
        except GrantEnded as error:
            raise self._ended(error) from error

    @property
    def auth(self) -> httpx.Auth:
        return _AsyncAuth(self)

    async def record_tool_call(
        self,
        tool: str,
        *,
        target: str = "",
        outcome: str = "success",
        action: str = "",
        detail=None,
    ) -> dict:
        body = _ops.tool_call_body(tool, target, outcome, action, detail)
        try:
            return (
                await self.client._send(Call("POST", f"/api/v1/grants/{self.id}/tool-calls", body))
            ).body
        except GrantEnded as error:
            raise self._ended(error) from error

    async def credential(self) -> dict:
        try:
            return (await self.client._send(_ops.credential_call(self.id))).body
        except GrantEnded as error:
            raise self._ended(error) from error

    async def complete(self) -> dict:
        try:
            return (
                await self.client._send(Call("POST", f"/api/v1/grants/{self.id}/complete"))
            ).body
        except GrantEnded as error:
            raise self._ended(error) from error

    async def extend(self, duration, *, intent=None, wait=True, context=None) -> AsyncGrant:
        request, token = await self.client._run(
            _ops.extend(
                grant_id=self.id,
                privilege=self.privilege,
                duration=duration,
                intent=intent or self.intent or "More time for the same task.",
                context=context,
                wait=wait,
                max_poll=self.client.max_poll_seconds,
            )
        )
        return self.client._grant_from(AsyncGrant, request, token)

    async def delegate(
        self, actor_token: str, *, intent, scope=None, duration=None, task_id="", context=None
    ) -> Delegation:
        call = self._delegation_call(
            await self.token(), actor_token, intent, scope, duration, task_id, context
        )
        return Delegation.from_answer(await self.client._send(call))

    async def __aenter__(self) -> AsyncGrant:
        return self

    async def __aexit__(self, exc_type, exc, traceback) -> None:
        if exc is not None:
            with contextlib.suppress(CustodyError):
                await self.client._send(
                    Call("POST", f"/api/v1/grants/{self.id}/tool-calls", self._failure(exc))
                )
        try:
            await self.complete()
        except (GrantEnded, Expired):
            pass
        except CustodyError:
            if exc is None:
                raise
