"""Every audit verb Custody writes, in one list: the audit page's verb filter offers these (and
their families, `grant.*`), and a test holds the code to it (tests/audit/test_verbs.py reads
every `verb=` in the source). A new kind of evidence adds its verb here."""

KNOWN_VERBS: tuple[str, ...] = (
    "agent.dormancy_cleared",
    "agent.dormant",
    "agent.orphan_cleared",
    "agent.orphaned",
    "agent.ownership_refused",
    "agent.reactivated",
    "agent.registered",
    "agent.retired",
    "agent.sponsor_deleted",
    "agent.sponsor_reassigned",
    "agent.suspended",
    "agent.team_changed",
    "agent.updated",
    "approvers.backup_added",
    "approvers.backup_removed",
    "approvers.change_refused",
    "approvers.group_member_added",
    "approvers.group_member_removed",
    "approvers.manager_added",
    "approvers.manager_removed",
    "approvers.permission_assigned",
    "approvers.permission_removed",
    "audit.archived",
    "auth.rejected",
    "beat.entry_restored",
    "broker.configured",
    "credential.abandoned",
    "credential.create_failed",
    "credential.destroy_failed",
    "credential.destroyed",
    "credential.issued",
    "decision.recorded",
    "decision.refused",
    "delegation.created",
    "delegation.refused",
    "eligibility.granted",
    "eligibility.removed",
    "eligibility.request_decided",
    "eligibility.requested",
    "eligibility.updated",
    "grant.drift_flagged",
    "grant.expired",
    "grant.expiry_notice",
    "grant.issued",
    "grant.refused",
    "grant.revoked",
    "introspection.forbidden",
    "introspection.refused",
    "login.failed",
    "login.locked_out",
    "person.created",
    "person.factor_added",
    "person.factor_removed",
    "person.sso_linked",
    "person.sso_unlinked",
    "policy.applied",
    "policy.changed",
    "policy.created",
    "policy.deleted",
    "policy.evaluated",
    "policy.grants_reevaluated",
    "policy.proposed",
    "policy.rejected",
    "privilege.changed",
    "privilege.created",
    "profile.time_zone_changed",
    "request.cancel_refused",
    "request.cancelled",
    "request.created",
    "request.denied",
    "request.escalated",
    "request.expired",
    "request.throttled",
    "review.completed",
    "review.escalated",
    "review.expired",
    "review.opened",
    "review.scheduled",
    "security_event.acknowledged",
    "security_event.delivered",
    "security_event.undeliverable",
    "signing_key.rotated",
    "slack.rejected",
    "ssf_stream.changed",
    "ssf_stream.created",
    "token.issued",
    "token.refused",
    "tool.called",
    "tool.refused",
    "trust_domain.changed",
    "trust_domain.keys_updated",
    "trust_domain.registered",
)

VERB_FAMILIES: tuple[str, ...] = tuple(sorted({verb.split(".", 1)[0] for verb in KNOWN_VERBS}))


def verb_choices() -> list[str]:
    """What the filter suggests: each family as `family.*`, then each verb."""
    return [f"{family}.*" for family in VERB_FAMILIES] + list(KNOWN_VERBS)


def verb_filter_refusal(wanted: str) -> str | None:
    """Why `wanted` matches no evidence Custody writes, or None: a known verb, or a known
    family followed by `.*` (`grant.*`)."""
    if wanted in KNOWN_VERBS:
        return None
    if wanted.endswith(".*") and wanted[:-2] in VERB_FAMILIES:
        return None
    families = ", ".join(f"{family}.*" for family in VERB_FAMILIES[:4])
    return (
        f"No evidence has the verb {wanted!r}. Choose a verb from the list, or a family with "
        f".* ({families}, …)."
    )
