"""The web UI for sponsors, teams and auditors: thin views over the same services and selectors
the API and Slack use. Every queryset is restricted to what the person may see first; anything
outside is 404."""

from __future__ import annotations

import re
from datetime import timedelta

from django.contrib import messages
from django.db.models import Count, Q
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from agents import services as agent_services
from agents.models import Agent
from agents.selectors import (
    agent_ids_managed_by,
    agents_review_overdue_for,
    agents_visible_to,
    audit_events_visible_to,
)
from approvals import selectors, services
from approvals.models import AccessRequest, Decision, Grant
from audit.exports import export_rows, iter_csv, iter_jsonl
from audit.models import AuditEvent
from audit.selectors import (
    audit_trail_of_request,
    chain_check_last_finished,
    chain_check_running,
)
from audit.services import Actor
from audit.verification import chain_check_request
from brokers.selectors import grant_credential
from core.errors import DomainError
from core.replica import replica_reads, replica_stream
from core.sessions import authenticated_at, second_factor_at
from frontend.audit_rows import audit_rows
from frontend.decorators import (
    login_required,
    object_permission_required,
    permission_required_or_404,
)
from frontend.forms import AuditFilterForm, BackupApproverForm, DecisionForm, ReasonForm
from frontend.views_eligibility import eligibility_context
from frontend.views_lifecycle import agent_lifecycle_context, dashboard_lifecycle_context
from frontend.views_live import dashboard_active_context
from frontend.views_reviews import agent_reviews_context, review_reminders_context

PAGE_SIZE = 50
# A critical approval waiting for the step-up: {"request_id", "verdict", "comment"}.
PENDING_DECISION_KEY = "custody_pending_decision"
# The refusals the step-up page (frontend/views_signin.py) answers: confirm it's you, again.
STEP_UP_CODES = ("step_up_required", "second_factor_required")


# --- dashboard and inbox -----------------------------------------------------------------------


@login_required
def dashboard(request):
    now = timezone.now()
    pending = selectors.requests_pending_for(request.user)
    overdue = agents_review_overdue_for(request.user)
    denials = (
        selectors.requests_visible_to(request.user)
        .filter(status=AccessRequest.Status.DENIED, decided_at__gte=now - timedelta(days=7))
        .select_related("agent", "privilege")
        .order_by("-decided_at")
    )
    return render(
        request,
        "frontend/dashboard.html",
        {
            "pending": _with_approvals(pending[:5], request.user),
            "pending_count": pending.count(),
            **dashboard_active_context(request.user),
            **dashboard_lifecycle_context(request.user),
            **review_reminders_context(request.user),
            "overdue": overdue[:10],
            "denials": denials[:10],
        },
    )


def _with_approvals(requests, viewer) -> list[AccessRequest]:
    """A page of requests, each with its approval progress as `viewer` sees it (who approved,
    who is still needed, why the viewer may not decide): a fixed few queries for the page."""
    page = list(requests)
    progress = selectors.approval_progress(page, viewer)
    for access_request in page:
        access_request.progress = progress[access_request.pk]
        access_request.approvals = access_request.progress.received
    return page


@login_required
@require_POST
@object_permission_required(None, AccessRequest, "request_id")
def request_decide(request, access_request: AccessRequest):
    form = DecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose approve or deny; a comment is at most 2000 characters.")
        return _after_decision(request, access_request, status=400)
    verdict, comment = form.cleaned_data["verdict"], form.cleaned_data["comment"]
    if (
        refusal := services.comment_refusal(verdict, comment, access_request.privilege.risk)
    ) is not None:
        # Before the step-up detour: the password would be asked for a decision that fails.
        messages.error(request, refusal.message)
        return _after_decision(request, access_request, status=400)
    try:
        _decide(request, access_request, verdict, comment)
    except DomainError as exc:
        if exc.code in STEP_UP_CODES:
            # Remembered so the decision is recorded as soon as the person is confirmed.
            request.session[PENDING_DECISION_KEY] = {
                "request_id": access_request.pk,
                "verdict": verdict,
                "comment": comment,
            }
            target = f"{reverse('step-up')}?next={reverse('request', args=[access_request.pk])}"
            if request.htmx:
                response = HttpResponse(status=204)
                response["HX-Redirect"] = target
                return response
            return redirect(target)
        return _after_decision(request, access_request, status=exc.status_code)
    return _after_decision(request, access_request)


def _decide(request, access_request: AccessRequest, verdict: str, comment: str) -> None:
    """Record one decision through the service and say what happened (messages)."""
    try:
        services.access_request_decide(
            access_request_id=access_request.pk,
            approver=request.user,
            verdict=verdict,
            comment=comment,
            channel=Decision.Channel.WEB,
            authenticated_at=authenticated_at(request),
            second_factor_at=second_factor_at(request),
        )
    except DomainError as exc:
        if exc.code not in STEP_UP_CODES:
            access_request.refresh_from_db()
            if exc.code in ("request_not_pending", "request_expired"):
                messages.warning(
                    request,
                    f"Someone else decided first: request #{access_request.pk} "
                    f"is {access_request.status}.",
                )
            else:
                messages.error(request, exc.message)
        raise
    access_request.refresh_from_db()
    messages.success(request, selectors.recorded_message(access_request))


def _after_decision(request, access_request, status: int = 200):
    if request.htmx:
        access_request = _with_approvals(
            selectors.requests_visible_to(request.user)
            .filter(pk=access_request.pk)
            .select_related("agent", "privilege"),
            request.user,
        )[0]
        return render(
            request,
            "frontend/_inbox_row.html",
            {"access_request": access_request, "form": DecisionForm(), "decided": True},
            status=status,
        )
    return redirect("request", request_id=access_request.pk)


# --- one request ---------------------------------------------------------------------------------


@login_required
@object_permission_required(None, AccessRequest, "request_id")
def request_detail(request, access_request: AccessRequest):
    decisions = access_request.decisions.select_related("approver").order_by("created_at")
    grant = (
        Grant.objects.filter(access_request=access_request)
        .select_related("agent", "privilege")
        .first()
    )
    # The chain of custody through this request's grant (or, without one, its parent's: then
    # only the ancestors, since the parent's other children are siblings, not this chain).
    if grant is not None:
        chain = selectors.grant_chain_of_custody(grant)
    elif access_request.parent_grant_id is not None:
        chain = selectors.grant_chain_of_custody(access_request.parent_grant, onward=False)
    else:
        chain = None
    trail = audit_rows(
        audit_trail_of_request(
            access_request_id=access_request.pk, grant_id=grant.pk if grant else None
        )[:500],
        request.user,
    )
    progress = selectors.progress_of(access_request, viewer=request.user)  # the service's rule
    return render(
        request,
        "frontend/request.html",
        {
            "access_request": access_request,
            "decisions": decisions,
            "grant": grant,
            "claims": selectors.grant_token_claims(grant) if grant else None,
            "credential": grant_credential(grant.pk) if grant else None,
            "drift_flags": selectors.grant_drift_flags(grant) if grant else [],
            "chain": chain,
            "trail": trail,
            "progress": progress,
            "can_decide": access_request.is_pending and not progress.refusal,
            "form": DecisionForm(),
        },
    )


# --- grants ------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
@object_permission_required("agents.manage_agent", Grant, "grant_id")
def grant_revoke(request, grant: Grant):
    form = ReasonForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            grant = services.grant_revoke(
                grant=grant, actor=Actor.for_user(request.user), detail=form.cleaned_data["reason"]
            )
            messages.success(
                request,
                f"Grant #{grant.pk} ended ({grant.get_revoke_reason_display().lower()}), with "
                "everything delegated from it.",
            )
        except DomainError as exc:
            messages.warning(request, exc.message)
        return redirect("grants")
    return render(
        request,
        "frontend/confirm.html",
        {
            "form": form,
            "title": f"Revoke grant #{grant.pk}",
            "what": f"{grant.scope} held by {grant.agent.name} for task {grant.task_id}. "
            "Every grant delegated from it ends too.",
            "button": "Revoke grant",
            "cancel": reverse("grants"),
        },
        status=400 if request.method == "POST" else 200,
    )


# --- agents ------------------------------------------------------------------------------------


@login_required
def agents(request):
    now = timezone.now()
    inventory = (
        agents_visible_to(request.user)
        .select_related("sponsor", "team")
        .annotate(
            active_grants=Count(
                "grants", filter=Q(grants__revoked_at__isnull=True, grants__expires_at__gt=now)
            )
        )
        .order_by("name")
    )
    inventory, filtered_by = _agent_filters(inventory, request.GET)
    return render(
        request,
        "frontend/agents.html",
        {
            "agents": inventory[:500],
            "filtered_by": filtered_by,
            "managed": agent_ids_managed_by(request.user),
        },
    )


# The posture page's links: /agents/?status=… and /agents/?flag=…; unknown values are ignored.
AGENT_FLAGS = {
    "orphaned": (
        "orphaned",
        lambda agents: agents.filter(orphaned_at__isnull=False).exclude(
            status=Agent.Status.RETIRED
        ),
    ),
    "dormant": (
        "dormant",
        lambda agents: agents.filter(dormant_at__isnull=False).exclude(status=Agent.Status.RETIRED),
    ),
    "review_overdue": (
        "review overdue",
        lambda agents: agents.filter(
            status=Agent.Status.ACTIVE, review_due__lt=timezone.localdate()
        ),
    ),
}


def _agent_filters(inventory, query) -> tuple:
    """The agents list narrowed by status and/or a flag, and the words that say so."""
    said = []
    if (status := query.get("status")) in Agent.Status.values:
        inventory = inventory.filter(status=status)
        said.append(Agent.Status(status).label.lower())
    if (flag := query.get("flag")) in AGENT_FLAGS:
        words, narrow = AGENT_FLAGS[flag]
        inventory = narrow(inventory)
        said.append(words)
    return inventory, ", ".join(said)


@login_required
@require_http_methods(["GET", "POST"])
@object_permission_required("agents.manage_agent", Agent, "agent_id")
def agent_suspend(request, agent: Agent):
    form = ReasonForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            agent_services.agent_suspend(
                agent=agent, actor=Actor.for_user(request.user), reason=form.cleaned_data["reason"]
            )
            messages.success(request, f"{agent.name} is suspended; its grants have ended.")
        except DomainError as exc:
            messages.warning(request, exc.message)
        return redirect("agents")
    return render(
        request,
        "frontend/confirm.html",
        {
            "form": form,
            "title": f"Suspend {agent.name}",
            "what": "The kill switch: the agent can no longer authenticate, and every grant it "
            "holds (and everything delegated from them) ends now.",
            "button": "Suspend agent",
            "cancel": reverse("agents"),
        },
        status=400 if request.method == "POST" else 200,
    )


@login_required
@require_POST
@object_permission_required("agents.manage_agent", Agent, "agent_id")
def agent_reactivate(request, agent: Agent):
    try:
        agent_services.agent_reactivate(
            agent=agent, actor=Actor.for_user(request.user), reason="reactivated in the web UI"
        )
        messages.success(request, f"{agent.name} is active again. It holds no grants.")
    except DomainError as exc:
        messages.warning(request, exc.message)
    return redirect("agents")


@login_required
@object_permission_required(None, Agent, "agent_id")
def agent_detail(request, agent: Agent):
    """One agent: ownership and who may approve for it; backup approvers are added and removed
    here by people holding the 'manage approvers' permission."""
    return _agent_page(request, agent, BackupApproverForm())


def _agent_page(
    request, agent: Agent, form: BackupApproverForm, status: int = 200, refusal: str = ""
):
    return agent_page(request, agent, form=form, status=status, refusal=refusal)


def agent_page(
    request,
    agent: Agent,
    *,
    form: BackupApproverForm | None = None,
    status: int = 200,
    refusal: str = "",
    eligibility_refusal: str = "",
    eligibility_form=None,
):
    return render(
        request,
        "frontend/agent.html",
        {
            "agent": agent,
            "backups": agent.backup_approvers.select_related("user", "added_by").order_by(
                "user__username"
            ),
            "can_manage_approvers": agent_services.may_manage_approvers(request.user, agent),
            "form": form or BackupApproverForm(),
            "refusal": refusal,
            **agent_lifecycle_context(request.user, agent),
            "eligibility_refusal": eligibility_refusal,
            **eligibility_context(request.user, agent, eligibility_form),
            **agent_reviews_context(request.user, agent),
        },
        status=status,
    )


@login_required
@require_POST
@object_permission_required(None, Agent, "agent_id")
def agent_approver_add(request, agent: Agent):
    form = BackupApproverForm(request.POST)
    if not form.is_valid():
        return _agent_page(request, agent, form, status=400)
    try:
        agent_services.backup_approver_add(agent=agent, user=form.person, by=request.user)
    except DomainError as exc:
        # The service audited a refusal (self-grant, no right); it is committed: no rollback.
        return _agent_page(request, agent, form, status=exc.status_code, refusal=exc.message)
    messages.success(request, f"{form.person.get_username()} may now approve for {agent.name}.")
    return redirect("agent", agent_id=agent.pk)


@login_required
@require_POST
@object_permission_required(None, Agent, "agent_id")
def agent_approver_remove(request, agent: Agent, user_id: int):
    person = get_object_or_404(agent.backup_approvers.select_related("user"), user_id=user_id).user
    try:
        agent_services.backup_approver_remove(agent=agent, user=person, by=request.user)
    except DomainError as exc:
        return _agent_page(
            request, agent, BackupApproverForm(), status=exc.status_code, refusal=exc.message
        )
    messages.success(request, f"{person.get_username()} no longer approves for {agent.name}.")
    return redirect("agent", agent_id=agent.pk)


# --- audit ---------------------------------------------------------------------------------------


def _audit_events(request, form: AuditFilterForm):
    wanted = form.cleaned_data
    return audit_events_visible_to(
        request.user,
        since=wanted.get("since"),
        until=wanted.get("until"),
        agent_id=wanted["agent"].pk if wanted.get("agent") else None,
        actor_type=AuditEvent.ActorType.USER if wanted.get("person") else None,
        actor_id=wanted.get("person") or None,
        verb=wanted.get("verb") or None,
        access_request_id=wanted.get("access_request"),
        grant_id=wanted.get("grant"),
    )


@login_required
def audit(request):
    form = AuditFilterForm(request.GET, user=request.user)
    before = request.GET.get("before") or ""
    # ASCII digits only, within bigint: "²" passes str.isdigit() but not int().
    if before and not re.fullmatch(r"[0-9]{1,18}", before):
        form.add_error(None, "'before' must be an audit event's sequence number (digits 0-9).")
    if not form.is_valid():
        return render(
            request,
            "frontend/audit.html",
            {"form": form, "events": [], **chain_check_context()},
            status=400,
        )
    # The evidence itself may come from a read replica (core/replica.py); who may see which
    # agent's evidence is decided on the primary, and the page frame renders from the primary.
    with replica_reads():
        events = _audit_events(request, form)
        export = request.GET.get("export")
        if export in ("csv", "jsonl"):
            # Plain rows from a server-side cursor, read from the replica as it streams,
            # after the view has returned.
            rows = replica_stream(export_rows(events.order_by("sequence")))
            stream = iter_csv(rows) if export == "csv" else iter_jsonl(rows)
            response = StreamingHttpResponse(
                stream, content_type="text/csv" if export == "csv" else "application/jsonl"
            )
            response["Content-Disposition"] = f'attachment; filename="custody-audit.{export}"'
            return response
        page = events.order_by("-sequence")
        if before:
            page = page.filter(sequence__lt=int(before))
        rows = list(page[: PAGE_SIZE + 1])
    query = request.GET.copy()
    query.pop("before", None)
    return render(
        request,
        "frontend/audit.html",
        {
            "form": form,
            "events": rows[:PAGE_SIZE],
            "rows": audit_rows(rows[:PAGE_SIZE], request.user),
            "next_before": rows[PAGE_SIZE - 1].sequence if len(rows) > PAGE_SIZE else None,
            "query": query.urlencode(),
            **chain_check_context(),
        },
    )


@login_required
@require_POST
@permission_required_or_404("audit.view_auditevent")
def audit_verify(request):
    """Start a walk of the chain in a worker (one at a time); the page polls its progress."""
    check, created = chain_check_request()
    if created:
        messages.success(request, "Verification started: its progress is shown below.")
    else:
        messages.info(request, "A verification is already running: its progress is shown below.")
    return redirect("audit")


@login_required
def audit_verify_status(request):
    """The chain-check card alone, for the audit page's htmx polling while a walk runs."""
    return render(request, "frontend/_chain_check.html", chain_check_context())


def chain_check_context() -> dict:
    return {"check": chain_check_last_finished(), "running": chain_check_running()}
