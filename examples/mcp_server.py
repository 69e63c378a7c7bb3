"""An MCP server whose privileged tools run only under a live Custody grant (stdio transport).

    export CUSTODY_URL=http://127.0.0.1:8000 CUSTODY_TASK_ID=close-books-2026-11
    export CUSTODY_SVID_FILE=/run/spire/svid.jwt   # the agent's JWT-SVID, re-read on each call
    python examples/mcp_server.py                  # an MCP client starts it over stdio

`server_time` needs nothing; `query_invoices` needs payments-db:read (granted at once by the
default policy); `post_refund` needs payments-api:refund (a person approves). Set
CUSTODY_MCP_WAIT_SECONDS to wait that long for a decision instead of answering "pending", and
CUSTODY_MCP_ASK_AGAIN_AFTER_REVOKE=true to ask for a new grant after a revocation.
"""

from datetime import UTC, datetime

from custody_client.mcp import CustodyGate, ToolRule, current_grant
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

# CUSTODY_URL, CUSTODY_SVID_FILE, CUSTODY_TASK_ID, CUSTODY_MCP_WAIT_SECONDS,
# CUSTODY_MCP_ASK_AGAIN_AFTER_REVOKE: see CustodyGate.from_env.
gate = CustodyGate.from_env(
    tools={
        "query_invoices": ToolRule("payments-db:read", target=lambda a: f"invoices/{a['month']}"),
        "post_refund": ToolRule("payments-api:refund", target=lambda a: f"refunds/{a['invoice']}"),
    },
)
server = MCPServer("payments", extensions=[gate])


@server.tool()
def server_time() -> str:
    """The server's clock (ungated)."""
    return datetime.now(UTC).isoformat()


@server.tool()
def query_invoices(month: str) -> str:
    """Invoices of one month, e.g. 2026-11."""
    if len(month) != 7 or month[4] != "-":
        raise ToolError(f"month is YYYY-MM, not {month!r}")
    return f"3 invoices in {month} (read under grant #{current_grant().id})"


@server.tool()
def post_refund(invoice: str, amount_cents: int) -> str:
    """Refund part of an invoice."""
    return f"refunded {amount_cents} cents on {invoice} (under grant #{current_grant().id})"


if __name__ == "__main__":
    server.run("stdio")
