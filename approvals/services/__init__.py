"""Writes about privileges: submit, decide, cancel, expire, grant, revoke, tokens, tool calls.

Every rule lives here once; the REST API, the web UI, Slack and Celery call these functions.
Each state change runs inside `transaction.atomic()` and either re-reads its rows under
`select_for_update()` or claims them with a conditional `UPDATE ... WHERE` (escalation, the
expiry notice); it writes its audit event in the same transaction and
defers slow work with `on_commit`.
A refusal that must leave evidence (a late or duplicate decision) commits the audit event and
then raises, so the caller still gets its 4xx.

Lock order — the one order for every transaction in Custody (README, "Security" → "Lock
order", is the reference; agents/services.py follows the same):
1. agent row(s), in primary-key order, through `lock_agents`: `FOR SHARE` to read-guard an
   agent's status (submit, decide, delegation), `FOR NO KEY UPDATE` to change it (suspend,
   retire, reactivate, ownership) or to serialize one agent's submits of a privilege that is
   part of a toxic pair;
2. access request(s);
3. grant(s), in primary-key order (`lock_in_pk_order`), parents before the children found
   under them;
4. any other row;
5. the audit chain head, last: `record()` appends at the end of `deferred_evidence()`.
A bulk deny (`access_requests_deny_bulk`) is one such transaction per request, in pk order.
Row locks are `FOR NO KEY UPDATE`, never plain `FOR UPDATE`: no transaction here changes a key,
and PostgreSQL's deferred foreign-key checks take `KEY SHARE` on the referenced agent, request
or grant at COMMIT — after the chain head — which a `FOR UPDATE` would block into a deadlock.
"""

from approvals.services.catalog import policy_delete, policy_save, privilege_save
from approvals.services.decisions import (
    BulkDenyResult,
    DecideResult,
    access_request_decide,
    access_requests_deny_bulk,
    can_approve,
    comment_refusal,
    is_initiator,
    record_refusal,
)
from approvals.services.delegation import delegation_exchange
from approvals.services.drift import drift_output
from approvals.services.eligibility import (
    NOT_A_MANAGER,
    eligibility_end_for_retired_agent,
    eligibility_grant,
    eligibility_remove,
    eligibility_request_decide,
    eligibility_request_submit,
    eligibility_update,
    may_manage_eligibility,
)
from approvals.services.grants import (
    delegations_cancel_orphaned,
    grant_complete,
    grant_end,
    grant_expire,
    grant_expiry_enqueue,
    grant_expiry_notice,
    grant_revoke,
    grants_expire_due,
    grants_expiry_enqueue_upcoming,
    grants_revoke_for_agent,
)
from approvals.services.policy_change import (
    policy_proposal_apply,
    policy_proposal_reject,
    policy_propose,
)
from approvals.services.reevaluation import grants_reevaluate
from approvals.services.requests import (
    SubmitResult,
    access_request_cancel,
    access_request_escalate,
    access_request_expire,
    access_request_submit,
    access_requests_escalate_for_orphan,
    grant_extension_request,
)
from approvals.services.simulation import (
    PolicySimulation,
    policies_without,
    policy_change_simulate,
    proposed_policies,
)
from approvals.services.tokens import (
    grant_token_refresh,
    token_introspect,
    tool_call_record,
)

__all__ = [
    "BulkDenyResult",
    "NOT_A_MANAGER",
    "DecideResult",
    "PolicySimulation",
    "SubmitResult",
    "access_request_cancel",
    "access_request_decide",
    "access_request_escalate",
    "access_requests_escalate_for_orphan",
    "access_request_expire",
    "access_request_submit",
    "access_requests_deny_bulk",
    "can_approve",
    "comment_refusal",
    "delegation_exchange",
    "delegations_cancel_orphaned",
    "eligibility_end_for_retired_agent",
    "eligibility_grant",
    "eligibility_remove",
    "eligibility_request_decide",
    "eligibility_request_submit",
    "eligibility_update",
    "grant_complete",
    "grant_end",
    "grant_expire",
    "grant_expiry_enqueue",
    "grants_expiry_enqueue_upcoming",
    "grant_expiry_notice",
    "grant_extension_request",
    "grant_revoke",
    "grant_token_refresh",
    "grants_reevaluate",
    "grants_expire_due",
    "grants_revoke_for_agent",
    "is_initiator",
    "may_manage_eligibility",
    "policies_without",
    "policy_change_simulate",
    "policy_delete",
    "policy_proposal_apply",
    "policy_proposal_reject",
    "policy_propose",
    "policy_save",
    "privilege_save",
    "proposed_policies",
    "record_refusal",
    "token_introspect",
    "tool_call_record",
    "drift_output",
]
