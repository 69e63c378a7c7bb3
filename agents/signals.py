"""What `agents` tells the apps above it, without importing them (the layers point one way).

`agent_deactivated` is the one seam from agents to approvals: sent with `agent`, `actor` and
`detail` inside the suspend/retire transaction, after the agent row is locked, so that receivers
(approvals/receivers.py: its grants and pending requests end) write in that same transaction and
keep the lock order (agent, then requests, then grants, the audit chain head last). A receiver
that raises rolls the whole transition back. `status` says which: `suspended` or `retired`;
on `retired` a receiver also removes what the agent was eligible for (the eligibility model's
app hooks here: retirement keeps history, it never deletes evidence).
"""

from django.dispatch import Signal

agent_deactivated = Signal()

agent_flagged = Signal()
"""An agent's life needs people: sent with `agent`, `actor` and `flag` (`orphaned` or `dormant`)
inside the transaction that flags it. approvals/receivers.py escalates an orphan's pending
requests to its backups and team (in that transaction) and tells the people by Slack on commit.
"""
