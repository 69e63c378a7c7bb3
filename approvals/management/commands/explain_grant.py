"""`manage.py explain_grant <grant-id>`: the chain of custody behind one grant, root first."""

import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from approvals.models import Grant
from approvals.selectors import ChainLink, ChainOfCustody, grant_chain_of_custody

VERDICT_PAST = {"approve": "approved", "deny": "denied"}


def _when(moment) -> str:
    return timezone.localtime(moment).isoformat(timespec="seconds") if moment else "-"


def _state(link: ChainLink) -> str:
    grant = link.grant
    if grant.revoked_at is not None:
        return f"ended {_when(grant.revoked_at)} ({grant.revoke_reason})"
    if not grant.is_active():
        return f"ended {_when(grant.expires_at)} (expired)"
    return "active"


def _link_lines(link: ChainLink, indent: str) -> list[str]:
    grant, access_request, agent = link.grant, link.access_request, link.agent
    intent = access_request.intent or {}
    lines = [
        f"{indent}Grant #{grant.pk} (depth {grant.depth}): {grant.scope} "
        f"held by {agent.name} <{agent.spiffe_id}>",
        f"{indent}  sponsor {agent.sponsor_name}, team {agent.team.name}",
        f"{indent}  task {grant.task_id}; issued {_when(grant.issued_at)}, "
        f"expires {_when(grant.expires_at)}; {_state(link)}",
        f"{indent}  request #{access_request.pk}: {intent.get('action', '')} on "
        f"{intent.get('target', '')} ({intent.get('justification', '')})",
        f"{indent}  policy: {access_request.policy_outcome} "
        f"[{', '.join(access_request.policy_ids) or '-'}]",
    ]
    if not link.decisions:
        lines.append(f"{indent}  decided by: nobody")
    for decision in link.decisions:
        who = decision.approver
        if who != "policy":
            who = f"{who} via {decision.channel}"
        lines.append(
            f"{indent}  {VERDICT_PAST[decision.verdict]} by {who} at {_when(decision.at)}"
            + (f": {decision.comment}" if decision.comment else "")
        )
    if not link.tool_calls:
        lines.append(f"{indent}  tool calls: none")
    for call in link.tool_calls:
        lines.append(
            f"{indent}  tool call #{call.sequence} at {_when(call.at)} by {call.actor}: "
            f"{call.tool} -> {call.target or '-'} ({call.outcome})"
        )
    return lines


def _as_dict(chain: ChainOfCustody) -> dict:
    def link(item: ChainLink) -> dict:
        grant = item.grant
        return {
            "grant_id": grant.pk,
            "parent_id": grant.parent_id,
            "depth": grant.depth,
            "agent": item.agent.spiffe_id,
            "agent_name": item.agent.name,
            "sponsor": item.agent.sponsor_name,
            "team": item.agent.team.name,
            "scope": grant.scope,
            "task_id": grant.task_id,
            "issued_at": grant.issued_at,
            "expires_at": grant.expires_at,
            "revoked_at": grant.revoked_at,
            "ended_reason": grant.ended_reason,
            "request_id": item.access_request.pk,
            "intent": item.access_request.intent,
            "policy_outcome": item.access_request.policy_outcome,
            "policies": item.access_request.policy_ids,
            "decisions": [vars(decision) for decision in item.decisions],
            "tool_calls": [vars(call) for call in item.tool_calls],
        }

    return {
        "accountable": chain.accountable,
        "root_approvers": chain.root_approvers,
        "links": [link(item) for item in chain.links],
        "onward": [link(item) for item in chain.onward],
    }


class Command(BaseCommand):
    help = (
        "Print the chain of custody behind a grant: every link from the root to it, who approved "
        "each and when, the human at the root, and every tool call made under each link."
    )

    def add_arguments(self, parser):
        parser.add_argument("grant_id", type=int)
        parser.add_argument("--json", action="store_true", help="Print it as JSON.")

    def handle(self, *args, grant_id: int, **options):
        grant = Grant.objects.filter(pk=grant_id).first()
        if grant is None:
            raise CommandError(f"There is no grant #{grant_id}.")
        chain = grant_chain_of_custody(grant)
        if options["json"]:
            self.stdout.write(json.dumps(_as_dict(chain), indent=2, default=str))
            return
        root = chain.root
        self.stdout.write(
            f"Chain of custody for grant #{grant.pk} ({grant.scope}, task {grant.task_id}): "
            f"{len(chain.links)} link(s)"
        )
        if chain.root_approvers:
            self.stdout.write(
                f"Human at the root: {chain.accountable} approved grant #{root.grant.pk}"
            )
        else:
            self.stdout.write(
                f"Human at the root: {chain.accountable}, sponsor of {root.agent.name} "
                f"(grant #{root.grant.pk} was approved by policy)"
            )
        for position, link in enumerate(chain.links):
            self.stdout.write("")
            marker = "root" if position == 0 else f"link {position}"
            self.stdout.write(f"[{marker}]")
            self.stdout.write("\n".join(_link_lines(link, "  ")))
        if chain.onward:
            self.stdout.write("")
            self.stdout.write(f"Delegated onward from grant #{grant.pk}:")
            for link in chain.onward:
                self.stdout.write(f"  from grant #{link.grant.parent_id}:")
                self.stdout.write("\n".join(_link_lines(link, "    ")))
