"""A grant's lineage: its ancestors up to the root, its descendants, and who approved it."""

from collections.abc import Iterable

from django.db.models import QuerySet

from approvals.models import Decision, Grant


def grant_ancestors(grant: Grant, *, grants: QuerySet[Grant] | None = None) -> list[Grant]:
    """The grant and its parents up to the root, nearest first (parents read from `grants`)."""
    if grants is None:
        grants = Grant.objects.select_related("agent", "agent__sponsor")
    chain = [grant]
    while chain[-1].parent_id is not None:
        chain.append(grants.get(pk=chain[-1].parent_id))
    return chain


def grant_descendants(grant_ids: Iterable[int], *, grants: QuerySet[Grant]) -> list[Grant]:
    """Every grant delegated from `grant_ids`, at any depth, breadth first (read from `grants`)."""
    found: list[Grant] = []
    frontier = list(grant_ids)
    while frontier:
        children = list(grants.filter(parent_id__in=frontier).order_by("depth", "pk"))
        found.extend(children)
        frontier = [child.pk for child in children]
    return found


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
    """The not yet revoked grants delegated from `grant_ids`, at any depth: what a cascade ends
    (ids only; the cascade locks them itself)."""
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
