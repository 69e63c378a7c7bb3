"""The inbox: what waits for the person's decision, searched, filtered, grouped by agent and
task, paged by keyset, and denied in bulk with one reason. All of it is a GET form (a URL people
can share) that works with and without htmx; every read goes through the selectors, restricted
to the person first, and every deny through the one decide service."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import reswap, retarget

from approvals import selectors, services
from core.errors import DomainError, InvalidInput
from frontend.decorators import login_required
from frontend.forms import BulkDenyForm, DecisionForm, InboxFilterForm, inbox_cursor
from frontend.forms_eligibility import EligibilityDecisionForm
from frontend.views import _with_approvals

INBOX_PAGE = 50
ELIGIBILITY_SHOWN = 50  # agents asking to become eligible, oldest first
GROUPS = 50  # the busiest (agent, task) pairs shown in "by agent and task"
FILTERS = ("q", "risk", "agent", "team", "age", "task")


def _filter_form(request, data) -> tuple[InboxFilterForm, selectors.InboxOverview]:
    overview = selectors.inbox_overview(request.user)
    return InboxFilterForm(data, agents=overview.agents, teams=overview.teams), overview


def _query(data, **extra) -> str:
    """The filter as a query string (empty fields left out), plus `extra`."""
    params = {name: data.get(name) for name in FILTERS if data.get(name)}
    params.update(extra)
    return urlencode(params)


def _url(data, **extra) -> str:
    query = _query(data, **extra)
    return f"{reverse('inbox')}?{query}" if query else reverse("inbox")


def _grouped(rows: list[dict], data) -> list[dict]:
    """(agent, task, count) rows as agents, each with its tasks, busiest agent first."""
    agents: dict[int, dict] = {}
    for row in rows:
        agent = agents.setdefault(
            row["agent_id"],
            {"agent_id": row["agent_id"], "name": row["agent__name"], "pending": 0, "tasks": []},
        )
        agent["pending"] += row["pending"]
        agent["tasks"].append(
            {
                "task_id": row["task_id"],
                "pending": row["pending"],
                "url": _url({**_plain(data), "agent": row["agent_id"], "task": row["task_id"]}),
            }
        )
    for agent in agents.values():
        agent["url"] = _url({**_plain(data), "agent": agent["agent_id"], "task": ""})
    return sorted(agents.values(), key=lambda agent: (-agent["pending"], agent["name"]))


def _plain(data) -> dict:
    return {name: data.get(name, "") for name in FILTERS}


def _inbox_context(
    request,
    filters: InboxFilterForm,
    overview: selectors.InboxOverview | None,
    bulk: BulkDenyForm | None = None,
) -> dict:
    """Everything the inbox shows. Without `overview` (the list's own 10-second refresh) the
    filter's choices and the groups, which live outside the list, are neither read nor sent."""
    context = {
        "filters": filters,
        "bulk": bulk or BulkDenyForm(),
        "form": DecisionForm(),
        "here": reverse("inbox"),
        "pending": [],
        "groups": None,
        "bulk_max": settings.CUSTODY_BULK_DENY_MAX,
    }
    if not filters.is_valid():
        return context
    wanted = filters.inbox_filter()
    pending = overview.pending if overview else None
    requests = selectors.inbox_requests(request.user, wanted, pending=pending)
    after = filters.cleaned_data["after"]
    rows, next_after = selectors.inbox_page(requests, after=after, size=INBOX_PAGE)
    if wanted.narrowed or overview is None:
        totals = selectors.inbox_totals(requests)
    else:
        totals = {"count": overview.count, "highest_id": overview.highest_id}
    groups = None
    if overview is not None:
        groups = _grouped(selectors.inbox_groups(requests, limit=GROUPS), filters.data)
    context.update(
        {
            "pending": _with_approvals(rows, request.user),
            "narrowed": wanted.narrowed,
            "total": totals["count"],
            "highest_id": totals["highest_id"],
            "groups": groups,
            "here": _url(filters.data, **({"after": filters.data["after"]} if after else {})),
            "first_url": _url(filters.data) if after else "",
            "next_url": _url(filters.data, after=inbox_cursor(next_after)) if next_after else "",
            "filter_fields": _plain(filters.data),
            "page_size": INBOX_PAGE,
        }
    )
    return context


def _render(request, context: dict, *, status: int = 200):
    template = "frontend/_inbox_list.html" if request.htmx else "frontend/inbox.html"
    return render(request, template, context, status=status)


def _eligibility_pending(user) -> dict:
    pending = selectors.eligibility_requests_pending_for(user)
    return {
        "eligibility_pending": list(pending[:ELIGIBILITY_SHOWN]),
        "eligibility_pending_total": pending.count(),
    }


@login_required
def inbox(request):
    if request.htmx and request.htmx.trigger == "inbox":  # the list refreshing itself
        filters, overview = InboxFilterForm(request.GET), None
    else:
        filters, overview = _filter_form(request, request.GET)
    context = _inbox_context(request, filters, overview)
    if not request.htmx:
        context.update(_eligibility_pending(request.user))
    return _render(request, context, status=200 if filters.is_valid() else 400)


@login_required
@require_POST
def inbox_eligibility_decide(request, eligibility_request_id: int):
    """Approve or deny an agent's request to become eligible, from the inbox; the service
    checks again who may decide it."""
    get_object_or_404(
        selectors.eligibility_requests_visible_to(request.user), pk=eligibility_request_id
    )
    form = EligibilityDecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose approve or deny.")
        return _inbox_again(request, status=400)
    try:
        decided = services.eligibility_request_decide(
            eligibility_request_id=eligibility_request_id,
            by=request.user,
            verdict=form.cleaned_data["verdict"],
            comment=form.cleaned_data["comment"],
        )
    except DomainError as exc:
        messages.error(request, exc.message)
        return _inbox_again(request, status=exc.status_code)
    messages.success(
        request,
        f"Eligibility request #{decided.pk} ({decided.privilege.name} for "
        f"{decided.agent.name}) is {decided.status}.",
    )
    return redirect("inbox")


def _inbox_again(request, *, status: int):
    """The inbox with the refusal shown, answered with the refusal's status."""
    filters, overview = _filter_form(request, {})
    context = _inbox_context(request, filters, overview)
    context.update(_eligibility_pending(request.user))
    return render(request, "frontend/inbox.html", context, status=status)


@login_required
@require_POST
def inbox_deny(request):
    """Deny the selected requests (or all matching the filter, up to the highest id the person
    saw) with one reason; each through `access_requests_deny_bulk`, one decision per request."""
    filters, overview = _filter_form(request, request.POST)
    bulk = BulkDenyForm(request.POST)
    if not (filters.is_valid() and bulk.is_valid()):
        return _bulk_refused(request, filters, bulk, status=400)
    wanted = bulk.cleaned_data
    most = settings.CUSTODY_BULK_DENY_MAX
    leftover = 0
    if wanted["matching"]:
        matching = selectors.inbox_requests(
            request.user, filters.inbox_filter(), pending=overview.pending
        ).filter(pk__lte=wanted["upto"])
        ids = list(matching.order_by("pk").values_list("pk", flat=True)[: most + 1])
        if len(ids) > most:
            ids = ids[:most]
            leftover = matching.filter(pk__gt=ids[-1]).count()
        if not ids:
            messages.warning(request, "Nothing matching is waiting for you any more.")
            return _after_bulk(request, filters, status=409)
    else:
        chosen = wanted["request"]
        if len(chosen) > most:
            bulk.add_error(None, f"At most {most} requests can be denied at once.")
            return _bulk_refused(request, filters, bulk, status=400)
        # Restricted first: a request the person cannot see is not found, and says nothing.
        ids = list(
            selectors.requests_visible_to(request.user)
            .filter(pk__in=chosen)
            .values_list("pk", flat=True)
        )
        if not ids:
            messages.error(request, "None of the selected requests is one you can see.")
            return _after_bulk(request, filters, status=404)
    try:
        result = services.access_requests_deny_bulk(
            access_request_ids=ids, approver=request.user, reason=wanted["reason"]
        )
    except InvalidInput as refusal:  # the form checks the same; the service has the last word
        bulk.add_error(None, refusal.message)
        return _bulk_refused(request, filters, bulk, status=400)
    if result.denied:
        count = len(result.denied)
        messages.success(
            request,
            f"Denied {count} request{'s' if count != 1 else ''}: "
            + ", ".join(f"#{pk}" for pk in result.denied[:20])
            + (f" and {count - 20} more." if count > 20 else "."),
        )
    for pk, refusal in list(result.refused.items())[:10]:
        messages.warning(request, f"#{pk} was not denied: {refusal.message}")
    if len(result.refused) > 10:
        messages.warning(request, f"{len(result.refused) - 10} more were not denied.")
    if leftover:
        messages.info(
            request,
            f"{leftover} more match; at most {most} are denied at once: deny again for the rest.",
        )
    status = 200
    if not result.denied and result.refused:
        status = next(iter(result.refused.values())).status_code
    return _after_bulk(request, filters, status=status)


def _after_bulk(request, filters: InboxFilterForm, *, status: int):
    """The list again (htmx), or back to the same filtered inbox (a redirect after a POST)."""
    if request.htmx or status >= 400:
        fresh, overview = _filter_form(request, _plain(filters.data))
        return _render(request, _inbox_context(request, fresh, overview), status=status)
    return redirect(_url(filters.data))


def _bulk_refused(request, filters: InboxFilterForm, bulk: BulkDenyForm, *, status: int):
    """Bad input: with htmx only the bulk form's message changes (the selection stays)."""
    if request.htmx:
        response = render(
            request, "frontend/_bulk_errors.html", {"bulk": bulk, "filters": filters}, status=status
        )
        return reswap(retarget(response, "#bulk-message"), "innerHTML")
    fresh, overview = _filter_form(request, _plain(filters.data))
    return _render(request, _inbox_context(request, fresh, overview, bulk), status=status)
