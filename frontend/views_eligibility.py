"""Eligibility on the agent's page: what it may ask for at all, granted and removed by its
sponsor (or a person who manages it, or an admin), and its own requests to become eligible,
decided by the people who decide its requests. Thin views over approvals' services."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from agents.models import Agent
from approvals import selectors, services
from approvals.approvers import may_approve
from approvals.models import EligibilityRequest
from core.errors import DomainError
from frontend.decorators import login_required, object_permission_required
from frontend.forms_eligibility import (
    EligibilityDecisionForm,
    EligibilityForm,
    EligibilityLimitsForm,
)

HISTORY_SHOWN = 50


def eligibility_context(
    user, agent: Agent, form: EligibilityForm | EligibilityLimitsForm | None = None
) -> dict:
    """`form` is the grant form, or one eligibility's limits form (refused, shown in its row)."""
    limits_form = None
    if isinstance(form, EligibilityLimitsForm) and not isinstance(form, EligibilityForm):
        limits_form, form = form, None
    can_manage = services.may_manage_eligibility(user, agent)
    in_force = list(selectors.agent_eligibility(agent))
    for item in in_force:
        item.limits_form = None
        if can_manage:
            if limits_form is not None and limits_form.current.pk == item.pk:
                item.limits_form, item.editing = limits_form, True
            else:
                item.limits_form, item.editing = EligibilityLimitsForm(current=item), False
    pending = list(
        selectors.agent_eligibility_requests(agent)
        .filter(status=EligibilityRequest.Status.PENDING)
        .order_by("created_at")
    )
    for eligibility_request in pending:
        eligibility_request.may_decide = may_approve(user, eligibility_request)
    return {
        "eligibility": in_force,
        "eligibility_history": selectors.agent_eligibility_history(agent).exclude(
            pk__in=[item.pk for item in in_force]
        )[:HISTORY_SHOWN],
        "eligibility_requests": pending,
        "can_manage_eligibility": can_manage,
        "eligibility_form": form or EligibilityForm(),
    }


def _page(request, agent: Agent, *, status: int, refusal: str, form=None):
    from frontend.views import agent_page  # the agent's page, with the refusal shown

    return agent_page(
        request, agent, status=status, eligibility_refusal=refusal, eligibility_form=form
    )


@login_required
@require_POST
@object_permission_required(None, Agent, "agent_id")
def agent_eligibility_grant(request, agent: Agent):
    form = EligibilityForm(request.POST)
    if not services.may_manage_eligibility(request.user, agent):
        return _page(request, agent, status=403, refusal=services.NOT_A_MANAGER, form=form)
    if not form.is_valid():
        return _page(request, agent, status=400, refusal="Check the form below.", form=form)
    privilege = form.cleaned_data["privilege"]
    try:
        services.eligibility_grant(
            agent=agent, privilege=privilege, by=request.user, **form.limits()
        )
    except DomainError as exc:
        return _page(request, agent, status=exc.status_code, refusal=exc.message, form=form)
    messages.success(request, f"{agent.name} is now eligible for {privilege.name}.")
    return redirect("agent", agent_id=agent.pk)


@login_required
@require_POST
@object_permission_required(None, Agent, "agent_id")
def agent_eligibility_update(request, agent: Agent, eligibility_id: int):
    """Change one eligibility's limits in place; the audit keeps the old and new limits."""
    current = get_object_or_404(selectors.agent_eligibility_history(agent), pk=eligibility_id)
    form = EligibilityLimitsForm(request.POST, current=current)
    if not services.may_manage_eligibility(request.user, agent):
        return _page(request, agent, status=403, refusal=services.NOT_A_MANAGER)
    if not form.is_valid():
        return _page(request, agent, status=400, refusal="Check the limits below.", form=form)
    try:
        updated = services.eligibility_update(
            eligibility_id=eligibility_id, agent=agent, by=request.user, **form.limits()
        )
    except DomainError as exc:
        if exc.status_code == 409:  # removed or ended meanwhile: its row is gone from the form
            form = None
        return _page(request, agent, status=exc.status_code, refusal=exc.message, form=form)
    messages.success(
        request,
        f"{agent.name}'s eligibility for {updated.privilege.name}: {updated.limits()}.",
    )
    return redirect("agent", agent_id=agent.pk)


@login_required
@require_POST
@object_permission_required(None, Agent, "agent_id")
def agent_eligibility_remove(request, agent: Agent, eligibility_id: int):
    try:
        removed = services.eligibility_remove(
            eligibility_id=eligibility_id,
            agent=agent,
            by=request.user,
            reason=request.POST.get("reason", "")[:500],
        )
    except DomainError as exc:
        return _page(request, agent, status=exc.status_code, refusal=exc.message)
    messages.success(request, f"{agent.name} is no longer eligible for {removed.privilege.name}.")
    return redirect("agent", agent_id=agent.pk)


@login_required
@require_POST
@object_permission_required(None, Agent, "agent_id")
def agent_eligibility_request_decide(request, agent: Agent, eligibility_request_id: int):
    get_object_or_404(selectors.agent_eligibility_requests(agent), pk=eligibility_request_id)
    form = EligibilityDecisionForm(request.POST)
    if not form.is_valid():
        return _page(request, agent, status=400, refusal="Choose approve or deny.")
    try:
        decided = services.eligibility_request_decide(
            eligibility_request_id=eligibility_request_id,
            by=request.user,
            verdict=form.cleaned_data["verdict"],
            comment=form.cleaned_data["comment"],
        )
    except DomainError as exc:
        return _page(request, agent, status=exc.status_code, refusal=exc.message)
    messages.success(
        request,
        f"Eligibility request #{decided.pk} ({decided.privilege.name}) is {decided.status}.",
    )
    return redirect("agent", agent_id=agent.pk)
