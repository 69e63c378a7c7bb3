"""Decisions: who may approve, one person's approve or deny, and the evidence of refused
attempts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from approvals import approvers, notifications, policy
from approvals.models import (
    AccessRequest,
    Decision,
    Grant,
)
from approvals.services.common import (
    lock_agents,
    on_commit_request_finished,
    policy_change_lock,
    request_transition,
)
from approvals.services.facts import request_policy_facts
from approvals.services.grants import grant_issue
from approvals.services.requests import access_request_mark_expired
from audit.services import Actor, deferred_evidence, record
from core.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound

Status = AccessRequest.Status


def can_approve(user, access_request: AccessRequest) -> bool:
    """Sponsor, backup approvers (object permission) or the privilege's approver group.
    Superuser status grants nothing here: approval is a personal, accountable act. The rule
    lives in approvals.approvers, which the pages use to show who may decide."""
    return approvers.may_approve(user, access_request)


def is_initiator(user, access_request: AccessRequest) -> bool:
    return approvers.is_initiator(user, access_request)


def comment_refusal(verdict: str, comment: str, risk: str) -> InvalidInput | None:
    """A denial says why; approving a critical request says why too. None when it does."""
    if comment.strip():
        return None
    if verdict == Decision.Verdict.DENY:
        message = "Give a reason for denying: the agent's sponsor and the audit log read it."
        return InvalidInput(message, code="deny_reason_required", fields={"comment": [message]})
    if risk == "critical":
        message = "Approving a critical request needs a comment: say what you checked."
        return InvalidInput(
            message, code="approval_comment_required", fields={"comment": [message]}
        )
    return None


STEP_UP_WINDOW = timedelta(minutes=10)


def _fresh_login(authenticated_at) -> bool:
    return authenticated_at is not None and timezone.now() - authenticated_at <= STEP_UP_WINDOW


@dataclass
class DecideResult:
    decision: Decision
    access_request: AccessRequest
    grant: Grant | None = None


def access_request_decide(
    *,
    access_request_id: int,
    approver,
    verdict: str,
    channel: str,
    comment: str = "",
    idempotent: bool = False,
    authenticated_at=None,
    second_factor_at=None,
) -> DecideResult:
    """One person's approve or deny. With `idempotent`, repeating one's own earlier verdict
    (a double click, a retried callback) returns that decision and records nothing new.
    Approving a critical request needs a login (`authenticated_at`) within STEP_UP_WINDOW, and,
    when CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR is on, a second factor
    (`second_factor_at`: an authenticator code or a passkey) within it too."""
    if verdict not in Decision.Verdict.values:
        raise InvalidInput(
            "The verdict is 'approve' or 'deny'.",
            code="invalid_verdict",
            fields={"verdict": ["Use approve or deny."]},
        )
    refusal: Exception | None = None
    result: DecideResult | None = None
    with transaction.atomic(), deferred_evidence():
        # Lock order: the agent (shared: its status is only read), then the request, then the
        # parent grant, the chain head last — so a decision racing a suspension waits for it,
        # and one racing the agent's own submissions never waits on them.
        agent_id = (
            AccessRequest.objects.filter(pk=access_request_id)
            .values_list("agent_id", flat=True)
            .first()
        )
        if agent_id is not None:
            lock_agents([agent_id])
        access_request = (
            AccessRequest.objects.select_for_update(no_key=True, of=("self",))
            .select_related("agent", "agent__sponsor", "agent__team", "privilege")
            .filter(pk=access_request_id)
            .first()
        )
        if access_request is None:
            raise NotFound(f"There is no request #{access_request_id}.")
        if access_request.parent_grant_id is not None:
            # Before any audit write, as grant_end orders it: a parent ending concurrently
            # either ends first (the mint below sees it) or waits until this child exists.
            Grant.objects.select_for_update(no_key=True).filter(
                pk=access_request.parent_grant_id
            ).first()
        ids = {"agent_id": access_request.agent_id, "access_request_id": access_request.pk}
        who = Actor.for_user(approver)

        def refuse(error: Exception, why: str) -> None:
            nonlocal refusal
            record(
                actor=who,
                verb="decision.refused",
                **ids,
                data={
                    "why": why,
                    "verdict": verdict,
                    "channel": channel,
                    "status": access_request.status,
                },
            )
            refusal = error

        if not can_approve(approver, access_request):
            refuse(Forbidden(approvers.NOT_AN_APPROVER, code="not_an_approver"), "not_an_approver")
        elif idempotent and (
            earlier := access_request.decisions.filter(approver=approver, verdict=verdict).first()
        ):
            result = DecideResult(earlier, access_request, getattr(access_request, "grant", None))
        elif (
            channel == Decision.Channel.SLACK
            and verdict == Decision.Verdict.APPROVE
            and not access_request.privilege.approvable_in_slack()
        ):
            refuse(
                Forbidden(
                    f"{access_request.privilege.risk.capitalize()} requests are approved in "
                    "Custody's web app, which can ask for a fresh login.",
                    code="approve_in_browser",
                ),
                "above_slack_risk",
            )
        elif not access_request.is_pending:
            refuse(
                Conflict(
                    f"Request #{access_request.pk} was already {access_request.status}.",
                    code="request_not_pending",
                ),
                "not_pending",
            )
        elif access_request.deadline_passed():
            access_request_mark_expired(access_request)
            refuse(
                Conflict(
                    f"Request #{access_request.pk} passed its deadline and expired.",
                    code="request_expired",
                ),
                "deadline_passed",
            )
        elif (
            missing := comment_refusal(verdict, comment, access_request.privilege.risk)
        ) is not None:
            refusal = missing  # bad input: nothing to record, nothing written
        elif (
            verdict == Decision.Verdict.APPROVE
            and access_request.privilege.risk == "critical"
            and settings.CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR
            and not _fresh_login(second_factor_at)
        ):
            refuse(
                Forbidden(
                    "Approving a critical request needs your second factor (an authenticator "
                    f"app or a passkey) within the last {STEP_UP_WINDOW.seconds // 60} minutes.",
                    code="second_factor_required",
                ),
                "second_factor_required",
            )
        elif (
            verdict == Decision.Verdict.APPROVE
            and access_request.privilege.risk == "critical"
            and not _fresh_login(authenticated_at)
        ):
            refuse(
                Forbidden(
                    "Approving a critical request needs a login within the last "
                    f"{STEP_UP_WINDOW.seconds // 60} minutes; sign in again to confirm.",
                    code="step_up_required",
                ),
                "step_up_required",
            )
        elif is_initiator(approver, access_request):
            refuse(
                Forbidden(approvers.INITIATOR, code="initiator_cannot_approve"),
                "initiator",
            )
        elif access_request.decisions.filter(approver=approver).exists():
            refuse(
                Conflict(approvers.ALREADY_DECIDED, code="already_decided"),
                "already_decided",
            )
        else:
            try:
                result = _record_decision(access_request, approver, verdict, channel, comment)
            except GrantRefused as refused:  # its evidence is written: commit, then raise
                refusal = refused
    if refusal is not None:
        raise refusal
    return result


@dataclass
class BulkDenyResult:
    denied: list[int] = field(default_factory=list)
    refused: dict[int, DomainError] = field(default_factory=dict)  # request id -> why not


def access_requests_deny_bulk(
    *, access_request_ids, approver, reason: str, channel: str = Decision.Channel.WEB
) -> BulkDenyResult:
    """Deny several requests with one reason, each through `access_request_decide` (every
    per-request rule, its own audit events, its Slack messages updated) in its own transaction,
    in primary-key order: one request locked at a time, in the documented lock order, so a bulk
    deny racing a single decision on one of the same requests serializes on that request and
    each is decided once. A request someone else decided first is reported, not denied twice.
    There is no bulk approve: approval stays one request, one look, one person at a time."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            "Give a reason for denying these requests; it is recorded on each of them.",
            code="reason_required",
            fields={"reason": ["Required."]},
        )
    ids = sorted({int(access_request_id) for access_request_id in access_request_ids})
    if not ids:
        raise InvalidInput(
            "Select at least one request to deny.",
            code="nothing_selected",
            fields={"request": ["Select at least one request."]},
        )
    most = settings.CUSTODY_BULK_DENY_MAX
    if len(ids) > most:
        raise InvalidInput(
            f"At most {most} requests can be denied at once; {len(ids)} were selected.",
            code="too_many_selected",
            fields={"request": [f"At most {most}."]},
        )
    result = BulkDenyResult()
    for access_request_id in ids:
        try:
            access_request_decide(
                access_request_id=access_request_id,
                approver=approver,
                verdict=Decision.Verdict.DENY,
                channel=channel,
                comment=reason,
            )
        except DomainError as refusal:  # its evidence is committed; the others go on
            result.refused[access_request_id] = refusal
        else:
            result.denied.append(access_request_id)
    return result


class GrantRefused(Conflict):
    """The final approval came but no grant may be minted. Raised after the request is denied
    and the evidence written, so `access_request_decide` commits before passing it on (409)."""


def _record_decision(access_request, approver, verdict, channel, comment) -> DecideResult:
    ids = {"agent_id": access_request.agent_id, "access_request_id": access_request.pk}
    who = Actor.for_user(approver)
    decision = Decision.objects.create(
        access_request=access_request,
        approver=approver,
        verdict=verdict,
        channel=channel,
        comment=comment[:2000],
    )
    record(
        actor=who,
        verb="decision.recorded",
        **ids,
        data={"verdict": verdict, "channel": channel, "comment": comment[:2000]},
    )
    if verdict == Decision.Verdict.DENY:
        request_transition(
            access_request, Status.DENIED, reason=f"denied by {approver.get_username()}"
        )
        record(actor=who, verb="request.denied", **ids, data={"channel": channel})
        on_commit_request_finished(access_request.pk)
        return DecideResult(decision, access_request)
    approvals = access_request.approvals_received()
    if approvals < access_request.approvals_required:
        notifications.request_updated(access_request.pk)
        return DecideResult(decision, access_request)
    # Final approval: mint in this transaction, re-checking the agent and the policy. The agent
    # row is already locked (shared) by access_request_decide: its status cannot move under us.
    agent = Agent.objects.get(pk=access_request.agent_id)
    if agent.status != Agent.Status.ACTIVE:
        _refuse_grant(
            access_request,
            code="agent_not_active",
            reason=f"agent {agent.status} before grant",
            data={"agent_status": agent.status},
            message=f"The agent is {agent.status}; no grant was issued.",
        )
    parent = access_request.parent_grant
    if parent is not None and not parent.is_active():
        _refuse_grant(
            access_request,
            code="parent_grant_not_active",
            reason="parent grant ended before grant",
            data={"parent_grant_id": parent.pk},
            message=f"Grant #{parent.pk}, which this delegates from, has ended; "
            "no grant was issued.",
        )
    policy_change_lock(exclusive=False)  # a policy change commits before or after this
    outcome = policy.decide(policy.current_policies(), request_policy_facts(access_request))
    if outcome.outcome == "deny":
        _refuse_grant(
            access_request,
            code="policy_denied",
            reason="policy denied at grant time",
            data={"policies": outcome.policy_ids, "reason": outcome.reason},
            message=f"Policy no longer allows this: {outcome.reason}",
            actor=Actor.system("policy"),
        )
    people = "1 person" if approvals == 1 else f"{approvals} people"
    request_transition(access_request, Status.APPROVED, reason=f"approved by {people}")
    grant = grant_issue(access_request, actor=who)
    on_commit_request_finished(access_request.pk)
    return DecideResult(decision, access_request, grant)


def _refuse_grant(
    access_request, *, code: str, reason: str, data: dict, message: str, actor: Actor | None = None
) -> None:
    """The final approval came, but no grant may be minted: the request ends denied, with
    evidence, and the approver is told why (GrantRefused, 409)."""
    request_transition(access_request, Status.DENIED, reason=reason)
    record(
        actor=actor or Actor.system(),
        verb="grant.refused",
        agent_id=access_request.agent_id,
        access_request_id=access_request.pk,
        data={"why": code, **data},
    )
    on_commit_request_finished(access_request.pk)
    raise GrantRefused(message, code=code)


def record_refusal(*, person, access_request_id: int, why: str, channel: str) -> None:
    """Evidence of a decision attempt that never reached a request the person may see."""
    record(
        actor=Actor.for_user(person),
        verb="decision.refused",
        access_request_id=access_request_id,
        data={"why": why, "channel": channel},
    )
