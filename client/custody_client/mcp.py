"""The MCP gate: an MCP server's privileged tools run only under a live Custody grant.

`CustodyGate` is an extension for a server built with the official `mcp` SDK (2.x):

    gate = CustodyGate(
        url="https://custody.example.com",
        svid="/run/spire/svid.jwt",  # or a callable returning the JWT-SVID
        task_id="close-books-2026-11",
        tools={"query_invoices": "payments-db:read", "post_refund": "payments-api:refund"},
    )
    server = MCPServer("payments", extensions=[gate])

Each `tools/call` of a mapped tool needs a live grant of its privilege for the task. Without
one the gate asks Custody for it, naming the tool and a summary of its arguments as the
intent: granted at once, the tool runs; waiting for people, the call answers "pending
approval" (an MCP tool error naming the request) or, with `wait_seconds`, waits that long for
a decision first. Every call that runs is recorded as tool-call evidence with its outcome
(`success`, `failure` for an error result, `error` for an exception). A grant that ended by
revocation (or completion, a cascade, a suspension, policy) refuses every later call; only
`ask_again_after_revoke=True` lets the gate ask for a new grant then. A grant that simply
expired is asked for again, like none at all. Tools not in the map pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from mcp.server.extension import Extension
from mcp_types import CallToolRequestParams, CallToolResult, TextContent

__all__ = ["CustodyGate", "GateGrant", "ToolRule", "current_grant", "summarize_arguments"]

logger = logging.getLogger(__name__)

# Custody's field limits (approvals/apis.py): longer text is cut, never refused.
ACTION_MAX, TARGET_MAX, JUSTIFICATION_MAX, TOOL_MAX = 200, 500, 2000, 200
# How long one long poll may hold an answer on the server (CUSTODY_MAX_WAIT_SECONDS' default).
LONG_POLL_MAX = 30
# Ended grants the gate may replace by asking again without being told to.
RENEWABLE = {"expired"}


@dataclass(frozen=True)
class ToolRule:
    """How one tool maps to a privilege.

    `target` names what the call touches, for the intent and each call's evidence (Custody's
    drift check compares them): a string, a function of the arguments, or None for a summary
    of the arguments. `action` is what the call does (`read`, `write`, …; default: the
    privilege's action)."""

    privilege: str
    target: str | Callable[[Mapping[str, Any]], str] | None = None
    action: str = ""
    duration_seconds: int | None = None
    justification: str | None = None

    def target_for(self, arguments: Mapping[str, Any]) -> str:
        if callable(self.target):
            return str(self.target(arguments))[:TARGET_MAX]
        if self.target is not None:
            return self.target[:TARGET_MAX]
        return summarize_arguments(arguments)

    def action_for(self) -> str:
        return self.action or self.privilege.rpartition(":")[2]


def summarize_arguments(arguments: Mapping[str, Any], limit: int = TARGET_MAX) -> str:
    """`name=value, …` in argument order, each value cut to 60 characters, the whole to
    `limit`: enough for a person to see what the tool was asked to do."""
    parts = []
    for name, value in arguments.items():
        text = value if isinstance(value, str) else repr(value)
        if len(text) > 60:
            text = text[:57] + "..."
        parts.append(f"{name}={text}")
    summary = ", ".join(parts) or "(no arguments)"
    return summary if len(summary) <= limit else summary[: limit - 3] + "..."


@dataclass
class GateGrant:
    """The grant a gated tool runs under (see `current_grant()`)."""

    id: int
    privilege: str
    task_id: str
    expires_at: str
    _gate: CustodyGate = field(repr=False)

    async def access_token(self) -> str:
        """A fresh access token for the resource server (Custody evaluates policy again)."""
        body = await self._gate._call("POST", f"/api/v1/grants/{self.id}/token")
        return body["access_token"]


_current: contextvars.ContextVar[GateGrant | None] = contextvars.ContextVar(
    "custody_gate_grant", default=None
)


def current_grant() -> GateGrant | None:
    """Inside a gated tool: the grant it runs under; elsewhere None."""
    return _current.get()


class _Refused(Exception):
    """A call the gate answers itself, as an MCP tool error result."""

    def __init__(self, message: str, **facts):
        super().__init__(message)
        self.message = message
        self.facts = facts

    def result(self) -> CallToolResult:
        return CallToolResult(
            content=[TextContent(type="text", text=self.message)],
            structured_content={"custody": self.facts},
            is_error=True,
        )


class _CustodyError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Holding:
    """What the gate knows of one privilege for its task."""

    grant: GateGrant | None = None
    pending_request_id: int | None = None
    refused: _Refused | None = None  # a denial or an ended grant: answered until told otherwise
    looked_up: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class CustodyGate(Extension):
    identifier = "io.custody/gate"

    def __init__(
        self,
        *,
        url: str,
        svid: str | Path | Callable[[], str],
        task_id: str,
        tools: Mapping[str, str | ToolRule],
        duration_seconds: int = 600,
        wait_seconds: float = 0,
        ask_again_after_revoke: bool = False,
        justification: str = "Asked for by an MCP server on the agent's behalf.",
        http: httpx.AsyncClient | None = None,
    ):
        self.url = url.rstrip("/")
        self._svid = svid
        self.task_id = task_id
        self.rules = {
            name: rule if isinstance(rule, ToolRule) else ToolRule(privilege=rule)
            for name, rule in tools.items()
        }
        self.duration_seconds = duration_seconds
        self.wait_seconds = wait_seconds
        self.ask_again_after_revoke = ask_again_after_revoke
        self.justification = justification
        self._http = http
        self._holdings: dict[str, _Holding] = {}

    # --- the SDK's hook ---------------------------------------------------------------------

    async def intercept_tool_call(self, params: CallToolRequestParams, ctx, call_next):
        rule = self.rules.get(params.name)
        if rule is None:
            return await call_next(ctx)
        arguments = dict(params.arguments or {})
        target = rule.target_for(arguments)
        try:
            grant = await self._live_grant(rule, params.name, arguments, target)
        except _Refused as refusal:
            return refusal.result()
        except (_CustodyError, httpx.HTTPError) as exc:
            return _Refused(
                f"Custody could not be asked for {rule.privilege}, so {params.name} did not "
                f"run: {_describe(exc)}",
                status="unavailable",
                privilege=rule.privilege,
            ).result()
        reset = _current.set(grant)
        try:
            result = await call_next(ctx)
        except Exception as exc:
            await self._record(grant, rule, params.name, target, "error", type(exc).__name__)
            raise
        finally:
            _current.reset(reset)
        failed = bool(getattr(result, "is_error", False))
        await self._record(grant, rule, params.name, target, "failure" if failed else "success")
        return result

    # --- grants -------------------------------------------------------------------------------

    async def _live_grant(self, rule, tool, arguments, target) -> GateGrant:
        holding = self._holdings.setdefault(rule.privilege, _Holding())
        async with holding.lock:  # one request per privilege, however many calls arrive at once
            if holding.grant is not None and not await self._still_live(holding, rule):
                holding.grant = None
            if holding.grant is not None:
                return holding.grant
            if holding.refused is not None:
                raise holding.refused
            if not holding.looked_up:
                holding.looked_up = True
                holding.grant = await self._existing_grant(rule.privilege)
                if holding.grant is not None:
                    return holding.grant
            if holding.pending_request_id is None:
                body = await self._call(
                    "POST",
                    "/api/v1/requests",
                    json={
                        "privilege": rule.privilege,
                        "task_id": self.task_id,
                        "duration_seconds": rule.duration_seconds or self.duration_seconds,
                        "intent": {
                            "action": f"MCP tool {tool}"[:ACTION_MAX],
                            "target": target,
                            "justification": (rule.justification or self.justification)[
                                :JUSTIFICATION_MAX
                            ],
                        },
                        "context": {
                            "mcp": {"tool": tool, "arguments": summarize_arguments(arguments)}
                        },
                    },
                )
            else:
                body = await self._call("GET", f"/api/v1/requests/{holding.pending_request_id}")
            deadline = time.monotonic() + self.wait_seconds
            while body["status"] == "pending" and time.monotonic() < deadline:
                wait = max(1, min(LONG_POLL_MAX, int(deadline - time.monotonic())))
                body = await self._call("GET", f"/api/v1/requests/{body['id']}?wait={wait}")
            return self._settle(holding, rule, tool, body)

    def _settle(self, holding: _Holding, rule: ToolRule, tool: str, body: dict) -> GateGrant:
        status, request_id = body["status"], body["id"]
        holding.pending_request_id = request_id if status == "pending" else None
        if status == "approved" and body.get("grant"):
            holding.grant = GateGrant(
                id=body["grant"]["id"],
                privilege=rule.privilege,
                task_id=self.task_id,
                expires_at=body["grant"]["expires_at"],
                _gate=self,
            )
            return holding.grant
        if status == "pending":
            received, required = body.get("approvals_received", 0), body["approvals_required"]
            raise _Refused(
                f"Pending approval: {tool} needs {rule.privilege}; Custody request "
                f"#{request_id} waits for people ({received} of {required} approvals). "
                "Call the tool again once it is approved.",
                status="pending_approval",
                request_id=request_id,
                privilege=rule.privilege,
                approvals_received=received,
                approvals_required=required,
            )
        reason = (body.get("decision") or {}).get("reason") or ""
        refusal = _Refused(
            f"Custody request #{request_id} for {rule.privilege} was {status}"
            + (f": {reason}" if reason else ".")
            + f" {tool} did not run.",
            status=status,
            request_id=request_id,
            privilege=rule.privilege,
            reason=reason,
        )
        if status == "denied":
            holding.refused = refusal  # asking again would only ask the same people again
        raise refusal

    async def _still_live(self, holding: _Holding, rule: ToolRule) -> bool:
        """Custody's word on the grant before each call: revoked means refused from now on."""
        grant = holding.grant
        body = await self._call("GET", f"/api/v1/grants/{grant.id}")
        if body["active"]:
            return True
        reason = body.get("ended_reason") or "ended"
        if reason in RENEWABLE or self.ask_again_after_revoke:
            return False
        holding.refused = _Refused(
            f"Refused: grant #{grant.id} for {rule.privilege} has ended ({reason}); tools "
            "needing it no longer run.",
            status="grant_ended",
            grant_id=grant.id,
            privilege=rule.privilege,
            reason=reason,
        )
        raise holding.refused

    async def _existing_grant(self, privilege: str) -> GateGrant | None:
        """A live grant of the privilege for this task, from before a restart."""
        body = await self._call("GET", "/api/v1/grants?active=true")
        for grant in body["results"]:
            if grant["privilege"] == privilege and grant["task_id"] == self.task_id:
                return GateGrant(
                    id=grant["id"],
                    privilege=privilege,
                    task_id=self.task_id,
                    expires_at=grant["expires_at"],
                    _gate=self,
                )
        return None

    async def _record(self, grant, rule, tool, target, outcome, error: str = "") -> None:
        detail = {"via": "mcp"} | ({"error": error[:200]} if error else {})
        try:
            await self._call(
                "POST",
                f"/api/v1/grants/{grant.id}/tool-calls",
                json={
                    "tool": tool[:TOOL_MAX],
                    "target": target,
                    "outcome": outcome,
                    "action": rule.action_for(),
                    "detail": detail,
                },
            )
        except (_CustodyError, httpx.HTTPError) as exc:
            # The call already ran; the next one asks Custody about the grant again first.
            logger.warning("Tool call %s under grant #%s not recorded: %s", tool, grant.id, exc)

    # --- HTTP -----------------------------------------------------------------------------------

    def svid(self) -> str:
        if callable(self._svid):
            return self._svid()
        return Path(self._svid).read_text().strip()  # re-read: SPIRE's helper rewrites it

    async def _call(self, method: str, path: str, json: dict | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self.svid()}"}
        if self._http is None:
            # Longer than the longest long poll, so a held answer is never cut short.
            self._http = httpx.AsyncClient(timeout=LONG_POLL_MAX + 10)
        response = await self._http.request(method, self.url + path, json=json, headers=headers)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise _CustodyError(response.status_code, error["code"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise _CustodyError(
                    response.status_code, "http_error", response.text[:200]
                ) from None
        return response.json()


def _describe(exc: Exception) -> str:
    if isinstance(exc, _CustodyError):
        return f"{exc.message} ({exc.status} {exc.code})"
    return f"{type(exc).__name__}: {exc}"
