"""The MCP gate: an MCP server's privileged tools run only under a live Custody grant.

`CustodyGate` is an extension for a server built with the official `mcp` SDK (2.x):

    gate = CustodyGate(
        AsyncClient("https://custody.example.com", FileSvidSource("/run/spire/svid.jwt")),
        task_id="close-books-2026-11",
        tools={"query_invoices": "payments-db:read", "post_refund": "payments-api:refund"},
    )  # or CustodyGate.from_env(tools=...)
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
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp.server.extension import Extension
from mcp_types import CallToolRequestParams, CallToolResult, TextContent

from custody_client.client import AsyncClient, AsyncGrant
from custody_client.errors import CustodyError, Denied, Expired, PendingApproval

__all__ = ["CustodyGate", "ToolRule", "current_grant", "summarize_arguments"]

logger = logging.getLogger(__name__)

# Custody's field limits (approvals/apis.py): longer text is cut, never refused.
ACTION_MAX, TARGET_MAX, JUSTIFICATION_MAX, TOOL_MAX = 200, 500, 2000, 200
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
            try:
                return str(self.target(arguments))[:TARGET_MAX]
            except Exception:  # arguments the tool will refuse anyway: describe them as given
                return summarize_arguments(arguments)
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


_current: contextvars.ContextVar[AsyncGrant | None] = contextvars.ContextVar(
    "custody_gate_grant", default=None
)


def current_grant() -> AsyncGrant | None:
    """Inside a gated tool: the grant it runs under (`await current_grant().token()` is a
    fresh access token for the resource server); elsewhere None."""
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


@dataclass
class _Holding:
    """What the gate knows of one privilege for its task."""

    grant: AsyncGrant | None = None
    pending_request_id: int | None = None
    refused: _Refused | None = None  # a denial or an ended grant: answered until told otherwise
    looked_up: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class CustodyGate(Extension):
    """Pass to `MCPServer(extensions=[gate])`; see the module's docstring."""

    identifier = "io.custody/gate"

    def __init__(
        self,
        client: AsyncClient,
        *,
        task_id: str,
        tools: Mapping[str, str | ToolRule],
        duration_seconds: int = 600,
        wait_seconds: float = 0,
        ask_again_after_revoke: bool = False,
        justification: str = "Asked for by an MCP server on the agent's behalf.",
    ):
        self.client = client
        self.task_id = task_id
        self.rules = {
            name: rule if isinstance(rule, ToolRule) else ToolRule(privilege=rule)
            for name, rule in tools.items()
        }
        self.duration_seconds = duration_seconds
        self.wait_seconds = wait_seconds
        self.ask_again_after_revoke = ask_again_after_revoke
        self.justification = justification
        self._holdings: dict[str, _Holding] = {}

    @classmethod
    def from_env(cls, *, tools: Mapping[str, str | ToolRule], **options) -> CustodyGate:
        """The client from `AsyncClient.from_env()` (CUSTODY_URL, CUSTODY_SVID_FILE, …), the
        task from CUSTODY_TASK_ID, the wait from CUSTODY_MCP_WAIT_SECONDS, each grant's length
        from CUSTODY_MCP_DURATION_SECONDS, and asking again
        after a revocation from CUSTODY_MCP_ASK_AGAIN_AFTER_REVOKE=true; `options` win."""
        options.setdefault("task_id", os.environ.get("CUSTODY_TASK_ID", "mcp"))
        options.setdefault("wait_seconds", float(os.environ.get("CUSTODY_MCP_WAIT_SECONDS", "0")))
        if os.environ.get("CUSTODY_MCP_DURATION_SECONDS"):
            options.setdefault("duration_seconds", int(os.environ["CUSTODY_MCP_DURATION_SECONDS"]))
        options.setdefault(
            "ask_again_after_revoke",
            os.environ.get("CUSTODY_MCP_ASK_AGAIN_AFTER_REVOKE", "").lower() == "true",
        )
        return cls(AsyncClient.from_env(), tools=tools, **options)

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
        except CustodyError as exc:  # unreachable, SVID refused, rate-limited, …
            return _Refused(
                f"Custody could not be asked for {rule.privilege}, so {params.name} did not "
                f"run: {exc.message}",
                status="unavailable",
                privilege=rule.privilege,
                code=exc.code,
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

    async def _live_grant(self, rule, tool, arguments, target) -> AsyncGrant:
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
            try:
                if holding.pending_request_id is None:
                    holding.grant = await self.client.request(
                        rule.privilege,
                        self.task_id,
                        {
                            "action": f"MCP tool {tool}"[:ACTION_MAX],
                            "target": target,
                            "justification": (rule.justification or self.justification)[
                                :JUSTIFICATION_MAX
                            ],
                        },
                        rule.duration_seconds or self.duration_seconds,
                        wait=self.wait_seconds,
                        context={
                            "mcp": {"tool": tool, "arguments": summarize_arguments(arguments)}
                        },
                    )
                else:
                    holding.grant = await self.client.wait_for(
                        holding.pending_request_id, wait=self.wait_seconds
                    )
            except PendingApproval as pending:
                holding.pending_request_id = pending.request_id
                received = pending.body.get("approvals_received", 0)
                required = pending.body.get("approvals_required", 1)
                raise _Refused(
                    f"Pending approval: {tool} needs {rule.privilege}; Custody request "
                    f"#{pending.request_id} waits for people ({received} of {required} "
                    "approvals). Call the tool again once it is approved.",
                    status="pending_approval",
                    request_id=pending.request_id,
                    privilege=rule.privilege,
                    approvals_received=received,
                    approvals_required=required,
                ) from None
            except CustodyError as refused:
                request_id = getattr(refused, "request_id", None) or holding.pending_request_id
                holding.pending_request_id = None  # decided (or gone): the next call asks anew
                if not isinstance(refused, Denied) and request_id is None:
                    raise  # Custody did not answer the question: not a decision
                if isinstance(refused, Denied):
                    status = "denied"
                elif isinstance(refused, Expired):
                    status = "expired"
                else:
                    status = refused.code.removeprefix("request_")
                reason = getattr(refused, "reason", "") or refused.message
                refusal = _Refused(
                    f"Custody request #{request_id} for {rule.privilege} was {status}: "
                    f"{reason} {tool} did not run.",
                    status=status,
                    request_id=request_id,
                    privilege=rule.privilege,
                    reason=reason,
                )
                if isinstance(refused, Denied):
                    holding.refused = refusal  # asking again would only ask the same people
                raise refusal from None
            holding.pending_request_id = None
            return holding.grant

    async def _still_live(self, holding: _Holding, rule: ToolRule) -> bool:
        """Custody's word on the grant before each call: revoked means refused from now on."""
        grant = holding.grant
        if any(listed["id"] == grant.id for listed in await self.client.grants(active=True)):
            return True
        ended = next((g for g in await self.client.grants() if g["id"] == grant.id), {})
        reason = ended.get("ended_reason") or "ended"
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

    async def _existing_grant(self, privilege: str) -> AsyncGrant | None:
        """A live grant of the privilege for this task, from before a restart."""
        for listed in await self.client.grants(active=True):
            if listed["privilege"] == privilege and listed["task_id"] == self.task_id:
                return await self.client.grant(listed["id"])
        return None

    async def _record(self, grant, rule, tool, target, outcome, error: str = "") -> None:
        detail = {"via": "mcp"} | ({"error": error[:200]} if error else {})
        try:
            await grant.record_tool_call(
                tool[:TOOL_MAX],
                target=target,
                outcome=outcome,
                action=rule.action_for(),
                detail=detail,
            )
        except CustodyError as exc:
            # The call already ran; the next one asks Custody about the grant again first.
            logger.warning("Tool call %s under grant #%s not recorded: %s", tool, grant.id, exc)
