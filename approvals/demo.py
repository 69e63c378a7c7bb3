"""The demo world: who `load_demo` creates and what `make demo-request KIND=…` asks for.

Development only (load_demo and the development trust domain refuse to run with DEBUG off).
Every preset can be finished with the demo logins printed by `make run`:

    auto        invoice bot reads payments-db for 10 min: policy grants it at once
    one         refund helper issues a refund (medium): one approval, by alice (bob initiated it)
    two         invoice bot writes payments-db (high): two approvals, by bob and dave (alice
                initiated it, so she cannot approve)
    critical    deploy bot administers prod-cluster (critical): two approvals, by erin and dave,
                each after a fresh sign-in (step-up), with a comment
    delegation  invoice bot holds payments-db:read and hands a narrower grant to the research
                agent, which belongs to another sponsor: carol approves
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# username, password, superuser, team, what they do (printed by `make run`)
DEMO_USERS = [
    ("admin", "custody-admin", True, None, "admin"),
    ("alice", "custody-alice", False, "payments-platform", "sponsor of the payments agents"),
    ("bob", "custody-bob", False, "payments-platform", "backup approver of the payments agents"),
    ("carol", "custody-carol", False, "research-platform", "sponsor of the research agent"),
    ("dave", "custody-dave", False, "security", "security reviewer (approver groups)"),
    ("erin", "custody-erin", False, "platform-ops", "sponsor of the deploy bot"),
]
DEMO_PASSWORDS = {username: password for username, password, *_ in DEMO_USERS}

DEMO_AGENTS = [
    # path, name, sponsor, team
    ("agents/invoice-bot", "Invoice bot", "alice", "payments-platform"),
    ("agents/refund-helper", "Refund helper", "alice", "payments-platform"),
    ("agents/research-agent", "Research agent", "carol", "research-platform"),
    ("agents/deploy-bot", "Deploy bot", "erin", "platform-ops"),
]
# An agent's life (invariant 13), shown on the dashboard: an orphan (its sponsor left the company:
# deactivated, so its team is asked to take ownership) and a dormant agent (quiet for weeks).
DEMO_LEAVER = ("frank", "research-platform")  # sponsored the reporting bot, then left
DEMO_ORPHAN = ("agents/reporting-bot", "Reporting bot", "frank", "research-platform")
DEMO_DORMANT = ("agents/nightly-export", "Nightly export", "carol", "research-platform")
DEMO_DORMANT_QUIET_DAYS = 45
DEMO_RESOURCE_SERVERS = [
    # path, name, sponsor, team, the token audiences it may introspect
    (
        "resource-servers/payments-gateway",
        "Payments gateway",
        "alice",
        "payments-platform",
        ["payments-db", "payments-api"],
    ),
]

DEMO_PRIVILEGES = [
    # resource, action, risk, max duration (s), description
    ("payments-db", "read", "low", 3600, "Read the payments database"),
    ("payments-db", "write", "high", 3600, "Write to the payments database"),
    ("payments-api", "refund", "medium", 1800, "Issue refunds through the payments API"),
    ("crm", "read", "low", 3600, "Read customer records"),
    ("prod-cluster", "admin", "critical", 900, "Administer the production cluster"),
]

# Backup approvers (agent path, username), added by the admin through the service.
DEMO_BACKUP_APPROVERS = [
    ("agents/invoice-bot", "bob"),
    ("agents/refund-helper", "bob"),
]

# A privilege's approver group: its members may approve that privilege for any agent.
DEMO_APPROVER_GROUPS = [
    # group, members, privileges it approves
    ("payments-approvers", ["dave"], ["payments-db:write"]),
    ("change-advisory-board", ["dave"], ["prod-cluster:admin"]),
]

# What each demo agent may ask for at all, made eligible by its sponsor (agent path, privilege,
# maximum duration in seconds or None for the privilege's own). Every preset below asks within
# it; the delegation preset's sub-agent is itself eligible, for at most 15 minutes.
DEMO_ELIGIBILITY = [
    ("agents/invoice-bot", "payments-db:read", None),
    ("agents/invoice-bot", "payments-db:write", None),
    ("agents/invoice-bot", "crm:read", None),
    ("agents/refund-helper", "payments-api:refund", None),
    ("agents/research-agent", "payments-db:read", 900),
    ("agents/deploy-bot", "prod-cluster:admin", None),
]


@dataclass(frozen=True)
class Preset:
    agent: str  # path under the development trust domain
    privilege: str
    duration_seconds: int
    initiator: str | None  # a demo username, or None: nobody (a scheduled job)
    intent: dict
    summary: str
    delegate_to: str | None = None  # the sub-agent the grant is handed down to
    delegated_duration_seconds: int = 0
    delegated_intent: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "auto": Preset(
        agent="agents/invoice-bot",
        privilege="payments-db:read",
        duration_seconds=600,
        initiator=None,
        intent={
            "action": "reconcile invoices",
            "target": "invoices for last week",
            "justification": "Nightly reconciliation found 3 mismatched invoices.",
        },
        summary="a low-risk read for 10 min, which policy grants at once",
    ),
    "one": Preset(
        agent="agents/refund-helper",
        privilege="payments-api:refund",
        duration_seconds=900,
        initiator="bob",
        intent={
            "action": "refund",
            "target": "invoice 7731",
            "justification": "The customer was charged twice; bob opened the ticket.",
        },
        summary="a medium-risk refund, which one person approves",
    ),
    "two": Preset(
        agent="agents/invoice-bot",
        privilege="payments-db:write",
        duration_seconds=1800,
        initiator="alice",
        intent={
            "action": "correct invoices",
            "target": "3 invoices in the payments ledger",
            "justification": "alice asked the bot to fix the mismatches reconciliation found.",
        },
        summary="a high-risk write, which two people approve",
    ),
    "critical": Preset(
        agent="agents/deploy-bot",
        privilege="prod-cluster:admin",
        duration_seconds=900,
        initiator=None,
        intent={
            "action": "rotate",
            "target": "ingress certificates",
            "justification": "They expire in two days; the scheduled rotation job started.",
        },
        summary="a critical privilege: two people, each after a fresh sign-in, with a comment",
    ),
    "delegation": Preset(
        agent="agents/invoice-bot",
        privilege="payments-db:read",
        duration_seconds=900,
        initiator="alice",
        intent={
            "action": "reconcile invoices",
            "target": "invoices for last week",
            "justification": "alice asked for a reconciliation with a sample analysis.",
        },
        summary="a grant handed down to an agent with another sponsor, who approves it",
        delegate_to="agents/research-agent",
        delegated_duration_seconds=600,
        delegated_intent={
            "action": "sample",
            "target": "100 invoices from last week",
            "justification": "The research agent checks the mismatch rate on a sample.",
        },
    ),
}
DEFAULT_KIND = "one"
# PRIVILEGE=… without KIND: the invoice bot asks for it, nobody initiated it.
CUSTOM = Preset(
    agent="agents/invoice-bot",
    privilege="",
    duration_seconds=600,
    initiator=None,
    intent={
        "action": "investigate",
        "target": "the request you typed",
        "justification": "Asked for by `make demo-request PRIVILEGE=…`.",
    },
    summary="your own request",
)

_DURATION = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> int:
    """'600', '600s', '30m' or '1h' in seconds; ValueError with a sentence otherwise."""
    match = _DURATION.match(str(text))
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"DURATION={text!r} is not a duration: write seconds (600) or 600s, 30m, 1h."
        )
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _UNIT_SECONDS[unit]
