"""A grant's lineage: its ancestors up to the root, its descendants, and who approved it."""

from collections.abc import Iterable

from approvals.models import Decision, Grant


def grant_ancestors(grant: Grant) -> list[Grant]:
    """The grant and its parents up to the root, nearest first."""
    chain = [grant]
    while chain[-1].parent_id is not None:
        chain.append(
            Grant.objects.select_related("agent", "agent__sponsor").get(pk=chain[-1].parent_id)
        )
    return chain


def grant_approvers(grant: Grant) -> list[str]:
    """Who approved the grant's request, in order ("policy" for an automatic approval).
    Remembered on the instance: minting and its audit event both ask."""
    cached = getattr(grant, "_custody_approvers", None)
    if cached is not None:
        return cached
    approvers = (
        Decision.objects.filter(
            access_request_id=grant.access_request_id, verdict=Decision.Verdict.APPROVE
        )
        .order_by("created_at", "pk")
        .values_list("approver__username", "channel")
    )
    grant._custody_approvers = [username or channel for username, channel in approvers]
    return grant._custody_approvers


def grant_descendant_ids(grant_ids: Iterable[int]) -> list[int]:
    found: list[int] = []
    frontier = list(grant_ids)
    while frontier:
        frontier = list(
            Grant.objects.filter(parent_id__in=frontier, revoked_at__isnull=True).values_list(
                "pk", flat=True
            )
        )
        found.extend(frontier)
    return found
