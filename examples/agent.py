"""A complete Custody agent: ask for a privilege for one task, work under it, finish.

CUSTODY_URL=http://127.0.0.1:8000 CUSTODY_SVID_FILE=/run/spire/svid.jwt python examples/agent.py
# with `make run`: CUSTODY_DEV_AGENT=spiffe://dev.custody.internal/agents/invoice-bot
"""

import sys

from custody_client import Client, CustodyError

INTENT = {
    "action": "read",
    "target": "payments-db/invoices",
    "justification": "3 invoices of November do not match the ledger.",
}

with Client.from_env() as custody:
    print("I am", custody.whoami()["spiffe_id"])
    try:
        # Blocks while people decide; the grant is completed when the block ends.
        with custody.request("payments-db:read", "reconcile-2026-11", INTENT, "10m") as grant:
            print(f"grant #{grant.id} until {grant.expires_at:%H:%M} UTC")
            # Call the database with grant.access_token (always fresh), then say what you did:
            grant.record_tool_call("sql", target="payments-db/invoices/2026-11", action="read")
    except CustodyError as refused:  # Denied, NotEligible, Expired, RateLimited, …
        sys.exit(f"Custody said no: {refused} [{refused.code}]")
