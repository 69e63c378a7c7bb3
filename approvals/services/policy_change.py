"""The two-person rule for policy (CUSTODY_POLICY_TWO_PERSON): a change is saved as a proposal
and goes live only when another admin applies it; the proposer may withdraw it (reject) but
never apply it. Applying goes through `policy_save`, so it is validated, versioned, audited and
followed by the re-evaluation of live grants like any other change."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from approvals.models import Policy, PolicyProposal
from approvals.services.catalog import policy_save, policy_text_validate
from approvals.services.common import policy_change_lock
from audit.services import Actor, deferred_evidence, record
from core.errors import Conflict, Forbidden, InvalidInput, NotFound

Status = PolicyProposal.Status


def policy_propose(*, proposal: PolicyProposal, user) -> PolicyProposal:
    """Keep a change (an unsaved proposal: its policy, None for a new one, name, description,
    text, enabled; kind for a new one) as a proposal against the policy's current version. A
    change to a policy keeps that policy's kind."""
    if proposal.policy_id is not None:
        proposal.kind = (
            Policy.objects.filter(pk=proposal.policy_id).values_list("kind", flat=True).first()
            or proposal.kind
        )
    policy_text_validate(text=proposal.text, kind=proposal.kind)
    if proposal.policy_id is None and Policy.objects.filter(name=proposal.name).exists():
        raise InvalidInput(
            f"A policy named {proposal.name} exists; propose a change to it instead.",
            code="policy_exists",
            fields={"name": ["A policy with this name exists."]},
        )
    with transaction.atomic(), deferred_evidence():
        if proposal.policy_id is not None:
            proposal.base_version = (
                Policy.objects.filter(pk=proposal.policy_id)
                .values_list("version", flat=True)
                .first()
            )
        proposal.status = Status.PROPOSED
        proposal.proposed_by = user
        proposal.proposed_at = timezone.now()
        proposal.save()
        record(
            actor=Actor.for_user(user),
            verb="policy.proposed",
            data={
                "proposal": proposal.pk,
                "policy": proposal.name,
                "kind": proposal.kind,
                "base_version": proposal.base_version,
                "enabled": proposal.enabled,
                "text": proposal.text,
            },
        )
    return proposal


def _locked_proposal(proposal_id: int) -> PolicyProposal:
    proposal = (
        PolicyProposal.objects.select_for_update(no_key=True, of=("self",))
        .select_related("proposed_by")
        .filter(pk=proposal_id)
        .first()
    )
    if proposal is None:
        raise NotFound("There is no such policy proposal.")
    if proposal.status != Status.PROPOSED:
        raise Conflict(
            f"Proposal #{proposal.pk} is already {proposal.get_status_display().lower()}.",
            code="proposal_not_pending",
        )
    return proposal


def policy_proposal_apply(*, proposal_id: int, user) -> Policy:
    """Another admin puts the proposal live. Refused to its proposer (403), and when the policy
    changed since it was proposed (409: what was reviewed is no longer what would change)."""
    with transaction.atomic():
        policy_change_lock(exclusive=True)  # before any row, like every policy change
        proposal = _locked_proposal(proposal_id)
        if proposal.proposed_by_id == user.pk:
            raise Forbidden(
                "You proposed this change, so another admin must apply it (two-person rule).",
                code="own_proposal",
            )
        if proposal.policy_id is None:
            if Policy.objects.filter(name=proposal.name).exists():
                raise Conflict(
                    f"A policy named {proposal.name} was created since this was proposed; "
                    "reject this proposal and propose a change to that policy.",
                    code="policy_changed_since_proposal",
                )
            policy_row = Policy(kind=proposal.kind)
        else:
            policy_row = Policy.objects.select_for_update(no_key=True).get(pk=proposal.policy_id)
            if policy_row.version != proposal.base_version:
                raise Conflict(
                    f"Policy {policy_row.name} is at version {policy_row.version} now; this was "
                    f"proposed against version {proposal.base_version}. Reject it and propose "
                    "the change again.",
                    code="policy_changed_since_proposal",
                )
        policy_row.name = proposal.name
        policy_row.description = proposal.description
        policy_row.text = proposal.text
        policy_row.enabled = proposal.enabled
        created = proposal.policy_id is None
        policy_save(policy_row=policy_row, actor=Actor.for_user(user), created=created)
        proposal.policy = policy_row
        proposal.status = Status.APPLIED
        proposal.decided_by = user
        proposal.decided_at = timezone.now()
        proposal.save(update_fields=["policy", "status", "decided_by", "decided_at"])
        record(
            actor=Actor.for_user(user),
            verb="policy.applied",
            data={
                "proposal": proposal.pk,
                "policy": policy_row.name,
                "version": policy_row.version,
                "proposed_by": proposal.proposed_by.get_username(),
            },
        )
    return policy_row


def policy_proposal_reject(*, proposal_id: int, user, reason: str) -> PolicyProposal:
    """Any admin, the proposer included (withdrawing), turns the proposal down, with a reason."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput(
            "Say why the proposal is rejected.",
            code="reason_required",
            fields={"reason": ["Required."]},
        )
    with transaction.atomic():
        proposal = _locked_proposal(proposal_id)
        proposal.status = Status.REJECTED
        proposal.decided_by = user
        proposal.decided_at = timezone.now()
        proposal.reason = reason[:2000]
        proposal.save(update_fields=["status", "decided_by", "decided_at", "reason"])
        record(
            actor=Actor.for_user(user),
            verb="policy.rejected",
            data={
                "proposal": proposal.pk,
                "policy": proposal.name,
                "reason": proposal.reason,
                "proposed_by": proposal.proposed_by.get_username(),
            },
        )
    return proposal
