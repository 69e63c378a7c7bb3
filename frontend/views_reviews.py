"""Reviews (recertification) in the web UI: the sponsor's list of open reviews (also on the
dashboard), and one review's page: the agent's purpose and owners, each eligibility with its use
in the period, unused ones pre-marked for removal, and the verdict on the agent. Completing goes
through `review_complete`, the one service. Only the sponsor or an admin sees a review (404)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils import timezone

from approvals import selectors
from approvals.models import Review
from approvals.review_evidence import as_csv, as_json, parse_day, period_refusal, review_campaign
from approvals.services.reviews import review_complete
from core.errors import DomainError
from frontend.decorators import login_required

REMINDERS_SHOWN = 10
OPEN_PER_PAGE = 100  # a campaign can open hundreds at once (an admin sees every agent's)
AGENT_REVIEWS_SHOWN = 20


def review_reminders_context(user) -> dict:
    """For the dashboard: the open reviews this person answers, the oldest due first."""
    waiting = selectors.reviews_for(user).filter(status=Review.Status.OPEN).order_by("due", "pk")
    return {"reviews_waiting": waiting[:REMINDERS_SHOWN], "reviews_waiting_count": waiting.count()}


def agent_reviews_context(user, agent) -> dict:
    """For the agent's page: its open review (prominent), and the ones before it with their
    result, reviewer and date; linked for the people who may open them (sponsor, admin)."""
    reviews = list(selectors.agent_reviews(agent)[:AGENT_REVIEWS_SHOWN])
    open_review = next((r for r in reviews if r.status == Review.Status.OPEN), None)
    for review in reviews:
        review.removed = sum(choice == "remove" for choice in review.decisions.values())
    return {
        "open_review": open_review,
        "open_review_overdue": open_review is not None and open_review.due < timezone.localdate(),
        "past_reviews": [review for review in reviews if review is not open_review],
        "may_open_reviews": selectors.may_open_reviews_of(user, agent),
    }


@login_required
def reviews(request):
    mine = selectors.reviews_for(request.user)
    waiting = Paginator(
        mine.filter(status=Review.Status.OPEN).order_by("due", "pk"), OPEN_PER_PAGE
    ).get_page(request.GET.get("page"))
    return render(
        request,
        "frontend/reviews.html",
        {
            "open_reviews": waiting,
            "closed_reviews": mine.filter(
                status__in=[Review.Status.COMPLETED, Review.Status.EXPIRED]
            ).order_by("-closed_at")[:50],
        },
    )


def _review_or_404(user, review_id: int) -> Review:
    review = selectors.reviews_for(user).filter(pk=review_id).first()
    if review is None:
        raise Http404("There is no such review for you.")
    return review


def _page(request, review: Review, *, status: int = 200, refusal: str = "", chosen=None):
    uses = selectors.review_usage(review)
    chosen = chosen or {}
    for use in uses:
        default = "remove" if use.unused else "keep"
        if review.status != Review.Status.OPEN:
            default = review.decisions.get(str(use.eligibility.pk), "keep")
        use.choice = chosen.get(use.eligibility.pk, default)
    agent = review.agent
    return render(
        request,
        "frontend/review.html",
        {
            "review": review,
            "agent": agent,
            "uses": uses,
            "backups": agent.backup_approvers.select_related("user").order_by("user__username"),
            "verdicts": Review.Verdict.choices,
            "chosen_verdict": request.POST.get("verdict", "attest"),
            "refusal": refusal,
        },
        status=status,
    )


@login_required
def review_detail(request, review_id: int):
    review = _review_or_404(request.user, review_id)
    if request.method != "POST":
        return _page(request, review)
    decisions: dict[int, str] = {}
    for key, value in request.POST.items():
        if key.startswith("decision-"):
            try:
                decisions[int(key.removeprefix("decision-"))] = value
            except ValueError:
                return _page(request, review, status=400, refusal="The form was garbled.")
    new_sponsor_id = None
    new_sponsor_name = request.POST.get("new_sponsor", "").strip()
    if request.POST.get("verdict") == Review.Verdict.REASSIGN and new_sponsor_name:
        new_sponsor_id = (
            get_user_model()
            .objects.filter(username=new_sponsor_name, is_active=True)
            .values_list("pk", flat=True)
            .first()
        )
        if new_sponsor_id is None:
            return _page(
                request,
                review,
                status=400,
                refusal=f"There is no active person called {new_sponsor_name!r}.",
                chosen=decisions,
            )
    try:
        outcome = review_complete(
            review_id=review.pk,
            by=request.user,
            decisions=decisions,
            verdict=request.POST.get("verdict", ""),
            comment=request.POST.get("comment", ""),
            new_sponsor_id=new_sponsor_id,
        )
    except DomainError as refused:
        review.refresh_from_db()
        return _page(
            request, review, status=refused.status_code, refusal=refused.message, chosen=decisions
        )
    removed = len(outcome.removed)
    messages.success(
        request,
        f"Review of {review.agent.name} completed: {outcome.review.get_verdict_display().lower()}"
        f"{f', {removed} eligibility removed' if removed else ''}.",
    )
    return redirect("review", review_id=review.pk)


def may_read_evidence(user) -> bool:
    """Admins, and people given the 'view review' permission (auditors)."""
    return user.is_active and (user.is_superuser or user.has_perm("approvals.view_review"))


@login_required
def review_evidence(request):
    """Campaign evidence for a period: the printable report, or CSV / JSON to download."""
    if not may_read_evidence(request.user):
        return render(
            request,
            "403.html",
            {"message": "Only admins and auditors read review evidence."},
            status=403,
        )
    today = timezone.localdate()
    since_text = request.GET.get("since") or (today - timedelta(days=90)).isoformat()
    until_text = request.GET.get("until") or today.isoformat()
    since, until = parse_day(since_text), parse_day(until_text)
    kind = request.GET.get("format", "html")
    refusal = period_refusal(since, until)
    if refusal is None and kind not in ("html", "csv", "json"):
        refusal = DomainError("The format is html, csv or json.")
    if refusal is not None:
        return HttpResponseBadRequest(refusal.message, content_type="text/plain; charset=utf-8")
    campaign = review_campaign(since=since, until=until)
    if kind == "html":
        return render(request, "frontend/review_evidence.html", {"campaign": campaign})
    body, content_type = (
        (as_csv(campaign), "text/csv") if kind == "csv" else (as_json(campaign), "application/json")
    )
    response = HttpResponse(body, content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="custody-reviews-{since}-{until}.{kind}"'
    )
    return response
