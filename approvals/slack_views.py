"""Slack's callbacks: interactivity (buttons, the comment modal) and the /custody command.

The signature is checked on the raw body before anything is parsed; the workspace and app must
be ours; the Slack user must map to a person; and the request named in a button is authorized
afresh by the same `access_request_decide` service the web and API use (an agent's request to
become eligible: `eligibility_request_decide`, as in the inbox). Each callback is
processed once (Slack retries and replays are acknowledged and ignored), and the endpoint answers
at once: message updates run in Celery.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from urllib.parse import parse_qs

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from slack_sdk.errors import SlackClientError
from slack_sdk.signature import SignatureVerifier

from agents.models import SponsorProfile
from approvals import approvers, selectors, services, slack
from approvals.models import AccessRequest, Decision, SlackInteraction
from approvals.tasks import notify_ephemeral
from audit.services import Actor, record, record_throttled
from core.client_ip import client_ip
from core.errors import DomainError

logger = logging.getLogger(__name__)
security_log = logging.getLogger("custody.security")
CANNOT_APPROVE = "You can't approve this request in Custody."
REQUEST_ID = re.compile(r"[0-9]{1,18}")
# Slack member ids are short and alphanumeric; anything else (a NUL byte, say) is no person.
SLACK_USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _reject(request, status: int, why: str) -> HttpResponse:
    security_log.warning(
        "Slack callback rejected: %s", why, extra={"event": "slack.rejected", "why": why}
    )
    record_throttled(
        bucket=f"slack:{why}",
        per_minute=settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE,
        actor=Actor.anonymous(client_ip(request) or "unknown"),
        verb="slack.rejected",
        data={"why": why, "path": request.path},
    )
    return JsonResponse(
        {"error": {"code": why, "message": "Rejected.", "fields": {}}}, status=status
    )


def _verified(request) -> bool:
    if not slack.enabled():
        return False  # fail closed: no secret, no trust
    verifier = SignatureVerifier(settings.SLACK_SIGNING_SECRET)
    return verifier.is_valid_request(request.body, dict(request.headers))


def _ours(team_id: str | None, app_id: str | None) -> bool:
    return team_id == settings.SLACK_TEAM_ID and (
        not settings.SLACK_APP_ID or app_id == settings.SLACK_APP_ID
    )


def _person(slack_user_id: str):
    if not isinstance(slack_user_id, str) or not SLACK_USER_ID.fullmatch(slack_user_id):
        return None
    profile = (
        SponsorProfile.objects.select_related("user")
        .filter(slack_user_id=slack_user_id, user__is_active=True)
        .first()
    )
    return profile.user if profile and slack_user_id else None


def _first_time(key: str) -> bool:
    """Claim a callback; False when Slack already delivered it (retry or replay)."""
    try:
        with transaction.atomic():
            SlackInteraction.objects.create(key=hashlib.sha256(key.encode()).hexdigest())
    except IntegrityError:
        return False
    return True


def _tell(payload: dict, text: str) -> None:
    channel = (payload.get("channel") or {}).get("id") or payload["user"]["id"]
    try:
        notify_ephemeral.delay(channel, payload["user"]["id"], text)
    except Exception:
        logger.exception("Could not enqueue a Slack ephemeral reply")


class Refusal(str):
    """A sentence for the person; `field` names the modal block it belongs to."""

    field = "verdict"


def _decide(person, request_id: int, verdict: str, comment: str = "") -> Refusal | None:
    """Decide through the shared service; None on success, else a sentence for the person."""
    if not selectors.requests_visible_to(person).filter(pk=request_id).exists():
        services.record_refusal(
            person=person,
            access_request_id=request_id,
            why="not_visible",
            channel=Decision.Channel.SLACK,
        )
        return Refusal(CANNOT_APPROVE)
    try:
        services.access_request_decide(
            access_request_id=request_id,
            approver=person,
            verdict=verdict,
            channel=Decision.Channel.SLACK,
            comment=comment,
            idempotent=True,
        )
    except DomainError as exc:
        refusal = Refusal(exc.message)
        if "comment" in (exc.fields or {}):
            refusal.field = "comment"
        return refusal
    return None


@csrf_exempt
@require_POST
def interactions(request):
    if not _verified(request):
        return _reject(request, 401, "bad_signature")
    try:
        payload = json.loads(parse_qs(request.body.decode())["payload"][0])
        kind = payload["type"]
        slack_user = payload["user"]["id"]
    except (KeyError, IndexError, ValueError, TypeError, UnicodeDecodeError):
        return _reject(request, 400, "malformed_payload")
    if not isinstance(slack_user, str) or not SLACK_USER_ID.fullmatch(slack_user):
        return _reject(request, 400, "malformed_payload")
    team_id = (payload.get("team") or {}).get("id") or payload["user"].get("team_id")
    if not _ours(team_id, payload.get("api_app_id")):
        return _reject(request, 403, "wrong_workspace")
    person = _person(slack_user)

    if kind == "block_actions":
        actions = payload.get("actions") or []
        action = actions[0] if actions else {}
        key = f"actions:{slack_user}:{action.get('action_id')}:{action.get('action_ts')}"
        if not _first_time(key):
            return HttpResponse(status=200)
        return _on_action(payload, person, action)
    if kind == "view_submission":
        view = payload.get("view") or {}
        if not _first_time(f"view:{view.get('id')}:{view.get('hash')}:{slack_user}"):
            return HttpResponse(status=200)
        return _on_modal(payload, person, view)
    return HttpResponse(status=200)


def _request_id(value) -> int | None:
    """A request id from a Slack value: ASCII digits within bigint, or None ("²" passes
    str.isdigit() but not int(); a number past bigint passes int() but not PostgreSQL)."""
    if isinstance(value, str) and REQUEST_ID.fullmatch(value):
        return int(value)
    return None


def _on_action(payload: dict, person, action: dict) -> HttpResponse:
    action_id = action.get("action_id")
    if action_id in (slack.ELIGIBILITY_APPROVE, slack.ELIGIBILITY_DENY):
        return _on_eligibility_action(payload, person, action)
    if action_id not in (slack.APPROVE, slack.DENY, slack.COMMENT):
        return HttpResponse(status=200)  # the "Review in Custody" link button, for instance
    request_id = _request_id(action.get("value"))
    if person is None:
        record(
            actor=Actor.anonymous(f"slack:{payload['user']['id']}"),
            verb="slack.rejected",
            access_request_id=request_id,
            data={"why": "unknown_slack_user", "slack_user": payload["user"]["id"]},
        )
        _tell(payload, CANNOT_APPROVE)
        return HttpResponse(status=200)
    if request_id is None:
        _tell(payload, "That button does not name a request.")
        return HttpResponse(status=200)
    if action_id == slack.COMMENT:
        return _open_modal(payload, person, request_id)
    if action_id == slack.DENY:  # a denial needs its reason: the modal asks for it
        return _open_modal(payload, person, request_id, verdict=Decision.Verdict.DENY)
    if problem := _decide(person, request_id, Decision.Verdict.APPROVE):
        _tell(payload, problem)
    else:
        _tell_progress(payload, request_id)
    return HttpResponse(status=200)


def _on_eligibility_action(payload: dict, person, action: dict) -> HttpResponse:
    """Approve or Deny on an agent's request to become eligible: decided at once by the same
    service the web inbox and the agent's page use, which checks who may decide it."""
    eligibility_request_id = _request_id(action.get("value"))
    verdict = "approve" if action.get("action_id") == slack.ELIGIBILITY_APPROVE else "deny"
    if person is None:
        record(
            actor=Actor.anonymous(f"slack:{payload['user']['id']}"),
            verb="slack.rejected",
            data={
                "why": "unknown_slack_user",
                "slack_user": payload["user"]["id"],
                "eligibility_request_id": eligibility_request_id,
            },
        )
        _tell(payload, CANNOT_APPROVE)
        return HttpResponse(status=200)
    if eligibility_request_id is None:
        _tell(payload, "That button does not name a request.")
        return HttpResponse(status=200)
    try:
        decided = services.eligibility_request_decide(
            eligibility_request_id=eligibility_request_id,
            by=person,
            verdict=verdict,
            comment=f"{verdict}d in Slack",
            channel="slack",
        )
    except DomainError as exc:
        if exc.code == "approve_in_browser" or exc.status_code not in (403, 404):
            _tell(payload, exc.message)
        else:  # not found and not allowed read the same: a button never tells what exists
            _tell(payload, CANNOT_APPROVE)
        return HttpResponse(status=200)
    _tell(
        payload,
        f"Recorded. Eligibility request #{decided.pk} ({decided.privilege.name} for "
        f"{decided.agent.name}) is {decided.status}.",
    )
    return HttpResponse(status=200)


def _tell_progress(payload: dict, request_id: int) -> None:
    """A partial approval reads as progress: "Recorded: 1 of 2, waiting for dave"."""
    access_request = AccessRequest.objects.select_related("agent", "privilege").get(pk=request_id)
    if access_request.is_pending:
        _tell(payload, approvers.progress_of(access_request).recorded)


def _open_modal(payload: dict, person, request_id: int, verdict: str = "") -> HttpResponse:
    access_request = (
        AccessRequest.objects.select_related("privilege", "agent").filter(pk=request_id).first()
    )
    if access_request is None or not services.can_approve(person, access_request):
        if verdict:  # a Deny click is a decision attempt: its refusal is evidence
            services.record_refusal(
                person=person,
                access_request_id=request_id,
                why="not_an_approver",
                channel=Decision.Channel.SLACK,
            )
        _tell(payload, CANNOT_APPROVE)
        return HttpResponse(status=200)
    # The same sentences the web page shows: no form for someone who may not decide it.
    progress = approvers.progress_of(access_request, viewer=person)
    if progress.refusal or not access_request.is_pending:
        _tell(payload, progress.refusal or f"Request #{request_id} is {access_request.status}.")
        return HttpResponse(status=200)
    try:
        slack.client().views_open(
            trigger_id=payload.get("trigger_id", ""),
            view=slack.decision_modal(access_request, verdict=verdict),
        )
    except SlackClientError:
        logger.exception("Slack refused to open the decision modal")
        _tell(payload, "Slack could not open the comment form; decide in Custody instead.")
    return HttpResponse(status=200)


def _on_modal(payload: dict, person, view: dict) -> HttpResponse:
    if view.get("callback_id") != slack.MODAL:
        return HttpResponse(status=200)
    if person is None:
        return JsonResponse({"response_action": "errors", "errors": {"verdict": CANNOT_APPROVE}})
    values = (view.get("state") or {}).get("values") or {}
    verdict = (((values.get("verdict") or {}).get("value") or {}).get("selected_option") or {}).get(
        "value"
    )
    comment = ((values.get("comment") or {}).get("value") or {}).get("value") or ""
    request_id = _request_id(view.get("private_metadata"))
    if verdict not in Decision.Verdict.values or request_id is None:
        return JsonResponse(
            {"response_action": "errors", "errors": {"verdict": "Choose approve or deny."}}
        )
    comment = str(comment).replace("\x00", "")[:2000]  # PostgreSQL text holds no NUL
    if problem := _decide(person, request_id, verdict, comment):
        return JsonResponse({"response_action": "errors", "errors": {problem.field: str(problem)}})
    if verdict == Decision.Verdict.APPROVE:
        _tell_progress({**payload, "channel": None}, request_id)
    return HttpResponse(status=200)


HELP = (
    "/custody pending: the requests waiting for your decision.\n"
    "/custody help: this text.\nDecide with the buttons on each request's message."
)


@csrf_exempt
@require_POST
def commands(request):
    if not _verified(request):
        return _reject(request, 401, "bad_signature")
    form = parse_qs(request.body.decode(errors="replace"))

    def field(name: str) -> str:
        return (form.get(name) or [""])[0]

    if not _ours(field("team_id"), field("api_app_id")):
        return _reject(request, 403, "wrong_workspace")
    person = _person(field("user_id"))
    words = field("text").strip().split()
    if person is None:
        text = "Custody does not know your Slack account; ask an admin to link it."
    elif not words or words[0] == "help":
        text = HELP
    elif words[0] == "pending":
        pending = list(selectors.requests_pending_for(person)[:20])
        progress = selectors.approval_progress(pending, person)
        text = (
            "\n".join(
                f"#{r.pk} {r.privilege.name} for {r.agent.name}: {r.intent.get('action', '')} "
                f"({progress[r.pk].summary}; decide by {r.decision_deadline:%Y-%m-%d %H:%M} UTC)"
                f" {slack.request_url(r)}"
                for r in pending
            )
            or "Nothing waits for your decision."
        )
    else:
        text = f"Unknown command.\n{HELP}"
    return JsonResponse({"response_type": "ephemeral", "text": slack.escape(text)})
