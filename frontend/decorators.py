"""Who may open a page, in one place: every view that names an object in its URL goes through
`object_permission_required`, never an ad-hoc check.

404 when the person cannot even see the object (nothing leaks about what exists), 403 when they
can see it but lack the permission; object permissions are guardian's, held on the agent.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required as django_login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django_htmx.http import HttpResponseClientRedirect

from agents.models import Agent
from agents.selectors import agents_visible_to
from approvals import selectors
from approvals.models import AccessRequest, Grant

# model -> (the view's argument, the selector restricting it to the person, related rows to load)
RESTRICTED = {
    Agent: ("agent", agents_visible_to, ("sponsor", "team")),
    Grant: ("grant", selectors.grants_visible_to, ("agent", "privilege")),
    AccessRequest: (
        "access_request",
        selectors.requests_visible_to,
        ("agent__sponsor", "agent__team", "privilege", "parent_grant"),
    ),
}
# What a page calls the object in its "not found" sentence, and the right a refusal names.
NOUNS = {Agent: "agent", Grant: "grant", AccessRequest: "request"}
RIGHTS = {
    "agents.manage_agent": "manage (suspend, reactivate, revoke the grants of)",
    "agents.approve_for_agent": "approve requests for",
    "agents.manage_approvers": "change who may approve for",
}


def login_required(view):
    """Django's, but an htmx request from a page whose session ended sends the whole page to
    the login form, instead of swapping the login form into a table row."""
    guarded = django_login_required(view)

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.htmx and not request.user.is_authenticated:
            back = request.htmx.current_url_abs_path or request.get_full_path()
            return HttpResponseClientRedirect(redirect_to_login(back)["Location"])
        return guarded(request, *args, **kwargs)

    return wrapper


def has_agent_permission(user, permission: str, agent: Agent) -> bool:
    """An object permission on the agent itself (a model-wide grant of it does not count)."""
    return user.is_superuser or user.has_perm(permission, agent)


def object_permission_required(permission: str | None, model, url_kwarg: str):
    """The view gets the object (as `agent`, `grant` or `access_request`) instead of its id in
    `url_kwarg`: restricted to the person first (404), then `permission` checked on its agent
    (403). With `permission` None, seeing it is enough."""
    argument, visible_to, related = RESTRICTED[model]

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            pk = kwargs.pop(url_kwarg)
            target = visible_to(request.user).select_related(*related).filter(pk=pk).first()
            if target is None:
                raise Http404(f"There is no {NOUNS[model]} #{pk} that you can see.")
            agent = target if isinstance(target, Agent) else target.agent
            if permission is not None and not has_agent_permission(request.user, permission, agent):
                needed = RIGHTS.get(permission, permission)
                raise PermissionDenied(
                    f"You may not do this: it needs the right to {needed} {agent.name}, "
                    "which you do not hold."
                )
            return view(request, *args, **{argument: target}, **kwargs)

        return wrapper

    return decorate


def permission_required_or_404(permission: str):
    """A model-wide permission for a page whose very existence is not everyone's business."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not (request.user.is_superuser or request.user.has_perm(permission)):
                raise Http404
            return view(request, *args, **kwargs)

        return wrapper

    return decorate
