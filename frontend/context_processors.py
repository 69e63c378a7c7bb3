"""What every page's frame needs: the nav's count of requests the person can decide now."""

from django.utils.functional import SimpleLazyObject

from approvals import selectors


def pending_for_me(request):
    """The inbox count, counted only when a template shows it (the nav in base.html), once per
    page; fragments swapped in by htmx never pay for it."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "pending_for_me": SimpleLazyObject(
            lambda: selectors.requests_pending_for(user).order_by().count()
        )
    }
