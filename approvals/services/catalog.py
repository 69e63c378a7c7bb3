"""The catalog and its policy: saving and deleting Cedar policies, saving privileges.

A policy change takes the policy-change lock (exclusive) before any row, so grants decided
under the old set commit first; once it commits, every live grant is decided again and those
the new set denies end (`grants_reevaluate`)."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F

from approvals import policy
from approvals.models import (
    PolicyRevision,
    PolicySetState,
)
from approvals.services.common import policy_change_lock
from approvals.services.reevaluation import grants_reevaluate
from audit.services import Actor, record
from core.errors import InvalidInput


def policy_text_validate(*, text: str, kind: str) -> None:
    """Refuse (400) a policy text that does not validate against its kind's schema."""
    try:
        policy.validate_policy_text(text, kind)
    except policy.PolicyTextError as exc:
        raise InvalidInput(
            "The policy does not validate: " + "; ".join(exc.errors),
            code="invalid_policy",
            fields={"text": exc.errors},
        )


def policy_save(*, policy_row, actor: Actor, created: bool):
    """Validate against its kind's schema, bump the version, keep the revision, move the
    generation (every process sees the change at its next decision or tool call)."""
    policy_text_validate(text=policy_row.text, kind=policy_row.kind)
    with transaction.atomic():
        policy_change_lock(exclusive=True)
        if not created:
            stored = type(policy_row).objects.select_for_update(no_key=True).get(pk=policy_row.pk)
            if stored.kind != policy_row.kind:
                raise InvalidInput(
                    f"Policy {stored.name} decides {stored.get_kind_display().lower()}; its kind "
                    "cannot change. Create a new policy of the other kind instead.",
                    code="policy_kind_fixed",
                    fields={"kind": ["Fixed once the policy exists."]},
                )
            policy_row.version = stored.version + 1
        policy_row.updated_by = actor.id
        policy_row.save()
        PolicyRevision.objects.create(
            policy=policy_row,
            version=policy_row.version,
            text=policy_row.text,
            enabled=policy_row.enabled,
            created_by=actor.id,
        )
        _policy_generation_bump()
        record(
            actor=actor,
            verb="policy.created" if created else "policy.changed",
            data={
                "policy": policy_row.name,
                "kind": policy_row.kind,
                "version": policy_row.version,
                "enabled": policy_row.enabled,
                "text": policy_row.text,
            },
        )
        if policy_row.kind == policy_row.Kind.REQUEST:
            # A drift policy decides tool calls, not grants: no live grant needs deciding again.
            _reevaluate_on_commit(
                actor, f"policy {policy_row.name} v{policy_row.version} saved by {actor.id}"
            )
    return policy_row


def _reevaluate_on_commit(actor: Actor, detail: str) -> None:
    """Once the change (and any transaction around it, like admin's) has committed, decide the
    live grants again. A failure there is logged, not raised: the change stands, and every
    token refresh and introspection still asks the new policy set."""
    transaction.on_commit(
        lambda: grants_reevaluate(actor=actor, detail=detail),
        robust=True,
    )


def _policy_generation_bump() -> None:
    """Every process rebuilds its compiled policy set at its next decision."""
    PolicySetState.objects.get_or_create(id=1)
    PolicySetState.objects.filter(id=1).update(generation=F("generation") + 1)


def policy_delete(*, policy_row, actor: Actor) -> None:
    with transaction.atomic():
        policy_change_lock(exclusive=True)
        name, version, kind = policy_row.name, policy_row.version, policy_row.kind
        policy_row.delete()
        _policy_generation_bump()
        record(
            actor=actor,
            verb="policy.deleted",
            data={"policy": name, "kind": kind, "version": version},
        )
        if kind == policy_row.Kind.REQUEST:
            _reevaluate_on_commit(actor, f"policy {name} v{version} deleted by {actor.id}")


def privilege_save(*, privilege, actor: Actor, created: bool):
    with transaction.atomic():
        privilege.save()
        record(
            actor=actor,
            verb="privilege.created" if created else "privilege.changed",
            data={
                "privilege": privilege.name,
                "risk": privilege.risk,
                "max_duration_seconds": privilege.max_duration_seconds,
                "approvals_required": privilege.approvals_required,
                "approver_group": privilege.approver_group.name
                if privilege.approver_group
                else None,
                "enabled": privilege.enabled,
            },
        )
    return privilege
