"""What approvals does when something below it changes.

- An agent suspended or retired (`agents.signals.agent_deactivated`, the one seam from agents to
  approvals): its pending requests and live grants end, in the sender's transaction (invariant 5);
  retired, what it was eligible for ends too (kept as history).
- An agent orphaned or dormant (`agents.signals.agent_flagged`): an orphan's pending requests
  escalate to its backups and team in the sender's transaction; the people hear by Slack on commit.
- A privilege's approver group confers the right to approve: joining or leaving it is evidence
  (invariant 11), written in the transaction that changes the membership.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models.signals import m2m_changed
from django.dispatch import receiver

from agents.receivers import audit_conferring_membership
from agents.signals import agent_deactivated, agent_flagged
from approvals import notifications
from approvals.models import Privilege
from approvals.services import (
    access_requests_escalate_for_orphan,
    eligibility_end_for_retired_agent,
    grants_revoke_for_agent,
)


@receiver(agent_deactivated)
def end_privileges_of_deactivated_agent(sender, agent, actor, detail, status=None, **kwargs):
    # Called with the agent row locked; takes requests, then grants, other rows (eligibility),
    # the chain head last.
    grants_revoke_for_agent(agent=agent, actor=actor, reason_detail=detail)
    if status == "retired":
        eligibility_end_for_retired_agent(agent=agent, actor=actor)


@receiver(agent_flagged)
def escalate_for_flagged_agent(sender, agent, actor, flag, **kwargs):
    if flag == "orphaned":
        access_requests_escalate_for_orphan(agent=agent, actor=actor)
    notifications.agent_flagged(agent.pk, flag)


def privileges_by_approver_group(group_ids) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for privilege in Privilege.objects.filter(approver_group_id__in=list(group_ids)):
        found.setdefault(privilege.approver_group_id, []).append(str(privilege))
    return found


@receiver(m2m_changed, sender=get_user_model().groups.through)
def audit_privilege_approver_group_membership(sender, instance, action, reverse, pk_set, **kwargs):
    audit_conferring_membership(
        instance=instance,
        action=action,
        reverse=reverse,
        pk_set=pk_set,
        conferring_by_group=privileges_by_approver_group,
        what="privileges",
    )
