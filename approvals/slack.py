"""Approvals in Slack: Block Kit rendering and the outbound calls, through slack-sdk's WebClient.

The posts and message updates run in Celery on the notifications queue (approvals/tasks.py),
never inside a transaction; only the comment modal is opened from the callback's web request
(slack_views.py), because Slack's trigger id lives for three seconds. Text that agents wrote
(intent, justification, task id) only ever goes into `plain_text` objects, which Slack never
parses for mentions, links or formatting; the few mrkdwn strings are built from Custody's own
words and escaped.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from slack_sdk import WebClient

from agents.models import Agent
from approvals import approvers, notifications
from approvals.lineage import grant_ancestors
from approvals.models import (
    AccessRequest,
    Decision,
    DriftFlag,
    EligibilityRequest,
    EligibilitySlackMessage,
    Grant,
    Review,
    SlackMessage,
    SlackNotice,
)
from core.formatting import duration_words, moment_words

APPROVE = "custody_approve"
DENY = "custody_deny"
COMMENT = "custody_comment"
MODAL = "custody_decision"
ELIGIBILITY_APPROVE = "custody_eligibility_approve"
ELIGIBILITY_DENY = "custody_eligibility_deny"
STATUS_EMOJI = {
    "pending": ":hourglass_flowing_sand:",
    "approved": ":white_check_mark:",
    "denied": ":no_entry:",
    "expired": ":alarm_clock:",
    "cancelled": ":wastebasket:",
}


def enabled() -> bool:
    return notifications.slack_enabled()


def client() -> WebClient:
    # No retry handlers of slack-sdk's own: Celery retries, honoring Retry-After.
    return WebClient(
        token=settings.SLACK_BOT_TOKEN,
        base_url=settings.SLACK_API_URL,
        timeout=10,
        retry_handlers=[],
    )


def escape(text: str) -> str:
    """Slack's three control characters, for the rare mrkdwn that carries outside words."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain(text: str, limit: int = 2900) -> dict:
    return {"type": "plain_text", "text": (str(text) or "-")[:limit], "emoji": False}


def slack_approvable(access_request: AccessRequest) -> bool:
    return access_request.privilege.approvable_in_slack()


def request_url(access_request: AccessRequest) -> str:
    return f"{settings.CUSTODY_PUBLIC_URL}/requests/{access_request.pk}/"


def _decided_line(access_request: AccessRequest) -> str:
    decisions = [d for d in access_request.decisions.all() if d.approver_id is not None]
    if access_request.status == AccessRequest.Status.APPROVED and not decisions:
        return "Approved automatically by policy"
    parts = [
        f"{'approved' if d.verdict == Decision.Verdict.APPROVE else 'denied'} by "
        f"{d.approver.get_username()} ({d.channel}, "
        f"{moment_words(d.created_at)})"
        for d in decisions
    ]
    return "; ".join(parts)


def render_request(access_request: AccessRequest, *, kind: str = SlackMessage.Kind.REQUEST):
    """Blocks and fallback text for one request, in its current state."""
    agent = access_request.agent
    privilege = access_request.privilege
    intent = access_request.intent or {}
    progress = approvers.progress_of(access_request)
    status = access_request.status
    headline = {
        SlackMessage.Kind.REQUEST: "Privilege request",
        SlackMessage.Kind.ESCALATION: "Escalated: too few people may approve"
        if progress.cannot_be_met
        else "Escalated: approvals still missing",
    }.get(kind, "Privilege request")
    blocks: list[dict] = [
        {"type": "header", "text": plain(f"{headline}: {privilege.name} ({privilege.risk})", 150)},
        {
            "type": "section",
            "fields": [
                plain(f"Agent: {agent.name}"),
                plain(f"SPIFFE ID: {agent.spiffe_id}"),
                plain(f"Sponsor: {agent.sponsor_name}"),
                plain(f"Duration asked: {duration_words(access_request.duration_seconds)}"),
                plain(f"Task: {access_request.task_id}"),
                plain(f"Approvals: {progress.summary}"),
            ],
        },
        {"type": "context", "elements": [plain(progress.rule.capitalize())]},
        {
            "type": "section",
            "text": plain(
                f"Intent: {intent.get('action', '')} on {intent.get('target', '')}\n"
                f"Justification: {intent.get('justification', '')}"
            ),
        },
        {"type": "context", "elements": [plain(f"Policy: {access_request.policy_reason}")]},
    ]
    if access_request.parent_grant_id:
        chain = " → ".join(
            g.agent.spiffe_id for g in reversed(grant_ancestors(access_request.parent_grant))
        )
        blocks.append(
            {
                "type": "context",
                "elements": [plain(f"Delegated along: {chain} → {agent.spiffe_id}")],
            }
        )
    if status == AccessRequest.Status.PENDING:
        deadline = moment_words(access_request.decision_deadline)
        blocks.append({"type": "context", "elements": [plain(f"Decide by {deadline}")]})
        buttons: list[dict] = []
        if slack_approvable(access_request):
            buttons.append(
                {
                    "type": "button",
                    "action_id": APPROVE,
                    "style": "primary",
                    "text": plain("Approve"),
                    "value": str(access_request.pk),
                }
            )
        else:
            blocks.append(
                {
                    "type": "section",
                    "text": plain(
                        f"{privilege.risk.capitalize()} privileges are approved in Custody: "
                        "Slack cannot prove a fresh login, so the web page asks for one."
                    ),
                }
            )
            buttons.append(
                {
                    "type": "button",
                    "action_id": "custody_review",
                    "text": plain("Review in Custody"),
                    "url": request_url(access_request),
                }
            )
        buttons += [
            {
                "type": "button",
                "action_id": DENY,
                "style": "danger",
                "text": plain("Deny"),
                "value": str(access_request.pk),
            },
            {
                "type": "button",
                "action_id": COMMENT,
                "text": plain("Comment…"),
                "value": str(access_request.pk),
            },
        ]
        blocks.append(
            {
                "type": "actions",
                "block_id": f"custody_request_{access_request.pk}",
                "elements": buttons,
            }
        )
    else:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": escape(
                        f"{STATUS_EMOJI.get(status, '')} {status.capitalize()}: "
                        f"{_decided_line(access_request) or access_request.final_reason}"
                    ),
                },
            }
        )
        grant = Grant.objects.filter(access_request=access_request).first()
        if grant is not None:
            blocks.append({"type": "context", "elements": [plain(_grant_line(grant))]})
    text = escape(f"{privilege.name} for {agent.name}: {status}")
    return blocks, text


def _grant_line(grant: Grant) -> str:
    if grant.revoked_at is not None:
        return (
            f"Grant #{grant.pk} ended {moment_words(grant.revoked_at)} "
            f"({grant.get_revoke_reason_display().lower()})."
        )
    if not grant.is_active():
        return f"Grant #{grant.pk} expired {moment_words(grant.expires_at)}."
    return f"Grant #{grant.pk} in force until {moment_words(grant.expires_at)}."


def _load(access_request_id: int) -> AccessRequest:
    return (
        AccessRequest.objects.select_related("agent__sponsor", "privilege", "parent_grant")
        .prefetch_related("decisions__approver")
        .get(pk=access_request_id)
    )


def approver_slack_ids(access_request: AccessRequest | EligibilityRequest) -> list[str]:
    """Everyone who may decide the request (an access request, or an agent's request to become
    eligible: the same people) and has a Slack user id."""
    from django.contrib.auth import get_user_model
    from guardian.shortcuts import get_users_with_perms

    users = set(
        get_users_with_perms(
            access_request.agent,
            only_with_perms_in=["approve_for_agent"],
            with_group_users=True,
            with_superusers=False,
        )
    )
    if access_request.privilege.approver_group_id:
        users |= set(
            get_user_model().objects.filter(groups=access_request.privilege.approver_group_id)
        )
    ids = []
    for user in sorted(users, key=lambda person: person.pk):
        profile = getattr(user, "sponsor_profile", None)
        if user.is_active and profile is not None and profile.slack_user_id:
            ids.append(profile.slack_user_id)
    return ids


def team_slack_channel_id(access_request: AccessRequest | EligibilityRequest) -> str:
    profile = getattr(access_request.agent.team, "team_profile", None)
    return profile.slack_channel_id if profile else ""


def post_request(access_request_id: int, *, kind: str = SlackMessage.Kind.REQUEST) -> int:
    """Post to each approver (and the team's channel) that has not had this message yet."""
    access_request = _load(access_request_id)
    places = approver_slack_ids(access_request)
    if kind == SlackMessage.Kind.ESCALATION:  # the sponsor hears of it, approver or not
        profile = getattr(access_request.agent.sponsor, "sponsor_profile", None)
        if profile is not None and profile.slack_user_id and profile.slack_user_id not in places:
            places.append(profile.slack_user_id)
    if channel_id := team_slack_channel_id(access_request):
        places.append(channel_id)
    blocks, text = render_request(access_request, kind=kind)
    sent = 0
    for place in places:
        message, _ = SlackMessage.objects.get_or_create(
            access_request=access_request, kind=kind, channel_id=place
        )
        if message.ts:
            continue
        answer = client().chat_postMessage(
            channel=place, blocks=blocks, text=text, unfurl_links=False, unfurl_media=False
        )
        message.channel_id = place
        message.ts = answer["ts"]
        message.rendered_status = access_request.status
        message.save(update_fields=["ts", "rendered_status", "updated_at"])
        sent += 1
    return sent


def update_request(access_request_id: int) -> int:
    """Bring every posted message about the request up to its current state."""
    access_request = _load(access_request_id)
    updated = 0
    for message in SlackMessage.objects.filter(access_request=access_request).exclude(ts=""):
        blocks, text = render_request(access_request, kind=message.kind)
        client().chat_update(channel=message.channel_id, ts=message.ts, blocks=blocks, text=text)
        message.rendered_status = access_request.status
        message.save(update_fields=["rendered_status", "updated_at"])
        updated += 1
    return updated


def post_expiry_notice(grant_id: int) -> int:
    grant = Grant.objects.select_related(
        "agent__sponsor__sponsor_profile", "agent__team", "access_request"
    ).get(pk=grant_id)
    places = []
    profile = getattr(grant.agent.sponsor, "sponsor_profile", None)
    if profile and profile.slack_user_id:
        places.append(profile.slack_user_id)
    if channel_id := team_slack_channel_id(grant.access_request):
        places.append(channel_id)
    text = escape(
        f"Grant #{grant.pk} ({grant.scope}) for {grant.agent.name} ends at "
        f"{moment_words(grant.expires_at)}. "
        "The agent must ask again for more time."
    )
    # Rounded to the minute: the message is read a little after it is sent.
    left = max(round((grant.expires_at - timezone.now()).total_seconds() / 60), 1) * 60
    sent = 0
    for place in places:
        message, _ = SlackMessage.objects.get_or_create(
            access_request=grant.access_request,
            kind=SlackMessage.Kind.EXPIRY_NOTICE,
            channel_id=place,
            defaults={"grant": grant},
        )
        if message.ts:
            continue
        answer = client().chat_postMessage(
            channel=place,
            text=text,
            blocks=[
                {
                    "type": "section",
                    "text": plain(
                        f"Grant #{grant.pk} ({grant.scope}) for {grant.agent.name} "
                        f"ends in {duration_words(left)}."
                    ),
                }
            ],
        )
        message.ts = answer["ts"]
        message.save(update_fields=["ts", "updated_at"])
        sent += 1
    return sent


# A notice claimed this long ago by a task that never marked it sent: that task died mid-post.
NOTICE_CLAIM_LEASE = timedelta(seconds=60)


class NoticeInFlight(Exception):
    """Another run of the task is posting this notice right now: try again after the lease."""


def post_notice_once(*, key: str, place: str, text: str) -> bool:
    """Post one notice to one place, once ever: a retried task, or the same task run twice, finds
    it sent and posts nothing. The claim is a conditional update, so two runs at the same time
    post it once too; a failed post gives the claim back for the retry."""
    notice, _ = SlackNotice.objects.get_or_create(key=key, channel_id=place)
    if notice.ts:
        return False
    now = timezone.now()
    claimed = (
        SlackNotice.objects.filter(pk=notice.pk, ts="")
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - NOTICE_CLAIM_LEASE))
        .update(claimed_at=now)
    )
    if not claimed:
        if SlackNotice.objects.filter(pk=notice.pk, ts="").exists():
            raise NoticeInFlight(key)
        return False  # sent by the other run meanwhile
    try:
        answer = client().chat_postMessage(
            channel=place,
            text=escape(text),
            blocks=[{"type": "section", "text": plain(text)}],
            unfurl_links=False,
        )
    except BaseException:
        SlackNotice.objects.filter(pk=notice.pk, claimed_at=now).update(claimed_at=None)
        raise
    SlackNotice.objects.filter(pk=notice.pk).update(ts=answer["ts"])
    return True


def agent_url(agent: Agent) -> str:
    return f"{settings.CUSTODY_PUBLIC_URL}/agents/{agent.pk}/"


def _sponsor_places(agent: Agent) -> list[str]:
    """The sponsor's Slack user id, when known."""
    profile = getattr(agent.sponsor, "sponsor_profile", None)
    return [profile.slack_user_id] if profile is not None and profile.slack_user_id else []


def _backup_and_team_places(agent: Agent) -> list[str]:
    """The backup approvers' Slack user ids and the team's channel, when known."""
    places = []
    for backup in agent.backup_approvers.select_related("user__sponsor_profile"):
        profile = getattr(backup.user, "sponsor_profile", None)
        if profile is not None and profile.slack_user_id:
            places.append(profile.slack_user_id)
    team_profile = getattr(agent.team, "team_profile", None)
    if team_profile is not None and team_profile.slack_channel_id:
        places.append(team_profile.slack_channel_id)
    return places


def post_agent_notice(agent_id: int, flag: str) -> int:
    """Dormant: its sponsor hears. Orphaned: its backup approvers and its team's channel hear,
    with how long they have to take ownership. Once per person or channel and per flagging
    (keyed by when it was flagged); nothing if the flag is gone before the message went out."""
    agent = Agent.objects.select_related("sponsor__sponsor_profile", "team__team_profile").get(
        pk=agent_id
    )
    places: list[str] = []
    if flag == "dormant":
        if agent.dormant_at is None:
            return 0  # it authenticated again (or was brought back) meanwhile
        since = agent.dormant_at
        places.extend(_sponsor_places(agent))
        text = (
            f"{agent.name} ({agent.spiffe_id}) has not authenticated for "
            f"{settings.CUSTODY_DORMANT_AFTER_DAYS} days. If it is still needed, nothing to do "
            f"but let it run; otherwise retire it. It is suspended after "
            f"{settings.CUSTODY_DORMANT_SUSPEND_AFTER_DAYS} quiet days. {agent_url(agent)}"
        )
    else:
        if agent.orphaned_at is None:
            return 0  # someone took ownership meanwhile
        since = agent.orphaned_at
        places.extend(_backup_and_team_places(agent))
        deadline = agent.orphan_deadline()
        text = (
            f"{agent.name} ({agent.spiffe_id}) is orphaned: "
            f"{agent.get_orphan_reason_display().lower()}. Someone from {agent.team.name} takes "
            f"ownership by {moment_words(deadline)}, or it is "
            f"suspended. Its pending requests now wait for its backups and team. "
            f"{agent_url(agent)}"
        )
    key = f"agent:{agent.pk}:{flag}:{since.isoformat()}"
    return sum(post_notice_once(key=key, place=place, text=text) for place in places)


def post_drift_notice(drift_flag_id: int) -> int:
    """A grant's tool call drifted from its intent: the agent's sponsor hears, with what and why."""
    flag = DriftFlag.objects.select_related(
        "grant__agent__sponsor__sponsor_profile", "grant__access_request"
    ).get(pk=drift_flag_id)
    grant = flag.grant
    profile = getattr(grant.agent.sponsor, "sponsor_profile", None)
    if profile is None or not profile.slack_user_id:
        return 0
    done = "The grant was ended." if flag.outcome == DriftFlag.Outcome.END else "It is flagged."
    text = (
        f"{grant.agent.name} drifted under grant #{grant.pk} ({grant.scope}): "
        f"{'; '.join(flag.kind_labels()).lower()} (tool {flag.tool}"
        f"{', target ' + flag.target if flag.target else ''}). {done} "
        f"{request_url(grant.access_request)}"
    )
    return int(post_notice_once(key=f"drift:{flag.pk}", place=profile.slack_user_id, text=text))


def post_review_notice(review_id: int, kind: str) -> int:
    """A review is due: its sponsor hears. Escalated halfway through the grace period: the team's
    channel and the backup approvers hear, with the date the overdue action is taken."""
    review = Review.objects.select_related(
        "agent__sponsor__sponsor_profile", "agent__team__team_profile"
    ).get(pk=review_id)
    agent = review.agent
    if review.status != Review.Status.OPEN:
        return 0  # answered (or expired) before the message went out
    places: list[str] = []
    action = settings.CUSTODY_REVIEW_OVERDUE_ACTION
    consequence = "it is suspended" if action == "suspend" else "it is recorded as overdue"
    url = f"{settings.CUSTODY_PUBLIC_URL}/reviews/{review.pk}/"
    if kind == "due":
        places.extend(_sponsor_places(agent))
        text = (
            f"Your review of {agent.name} ({agent.spiffe_id}) is due {review.due:%d %b %Y}: "
            f"confirm it is still needed and what it may ask for. Unanswered by "
            f"{review.grace_ends():%d %b %Y}, {consequence}. {url}"
        )
    else:
        places.extend(_backup_and_team_places(agent))
        text = (
            f"{agent.sponsor_name} has not reviewed {agent.name} ({agent.spiffe_id}), "
            f"due {review.due:%d %b %Y}. Unanswered by {review.grace_ends():%d %b %Y}, "
            f"{consequence}. {url}"
        )
    key = f"review:{review.pk}:{kind}"
    return sum(post_notice_once(key=key, place=place, text=text) for place in places)


# --- an agent asks to become eligible: the people who decide its requests answer here ----------

ELIGIBILITY_STATUS_EMOJI = {"approved": ":white_check_mark:", "denied": ":no_entry:"}


def render_eligibility_request(eligibility_request: EligibilityRequest):
    """Blocks and fallback text for one eligibility request, in its current state: Approve and
    Deny while pending (Approve only within the privilege's Slack risk ceiling), else who
    decided it and when."""
    agent = eligibility_request.agent
    privilege = eligibility_request.privilege
    status = eligibility_request.status
    blocks: list[dict] = [
        {
            "type": "header",
            "text": plain(f"Eligibility request: {privilege.name} ({privilege.risk})", 150),
        },
        {
            "type": "section",
            "fields": [
                plain(f"Agent: {agent.name}"),
                plain(f"SPIFFE ID: {agent.spiffe_id}"),
                plain(f"Sponsor: {agent.sponsor_name}"),
                plain(f"Limits asked: {eligibility_request.limits()}"),
            ],
        },
        {"type": "section", "text": plain(f"Why: {eligibility_request.justification}")},
        {
            "type": "context",
            "elements": [
                plain(
                    f"{agent.name} asks to be allowed to request {privilege.name} at all; each "
                    "request for it is still decided on its own."
                )
            ],
        },
    ]
    if status == EligibilityRequest.Status.PENDING:
        buttons: list[dict] = []
        if privilege.approvable_in_slack():
            buttons.append(
                {
                    "type": "button",
                    "action_id": ELIGIBILITY_APPROVE,
                    "style": "primary",
                    "text": plain("Approve"),
                    "value": str(eligibility_request.pk),
                }
            )
        else:
            buttons.append(
                {
                    "type": "button",
                    "action_id": "custody_review",
                    "text": plain("Review in Custody"),
                    "url": f"{settings.CUSTODY_PUBLIC_URL}/inbox/",
                }
            )
        buttons.append(
            {
                "type": "button",
                "action_id": ELIGIBILITY_DENY,
                "style": "danger",
                "text": plain("Deny"),
                "value": str(eligibility_request.pk),
            }
        )
        blocks.append(
            {
                "type": "actions",
                "block_id": f"custody_eligibility_{eligibility_request.pk}",
                "elements": buttons,
            }
        )
    else:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": escape(
                        f"{ELIGIBILITY_STATUS_EMOJI.get(status, '')} {status.capitalize()} by "
                        f"{eligibility_request.decided_by} "
                        f"({moment_words(eligibility_request.decided_at)})"
                    ),
                },
            }
        )
    text = escape(f"Eligibility for {privilege.name} for {agent.name}: {status}")
    return blocks, text


def _load_eligibility_request(eligibility_request_id: int) -> EligibilityRequest:
    return EligibilityRequest.objects.select_related(
        "agent__sponsor", "agent__team__team_profile", "privilege"
    ).get(pk=eligibility_request_id)


def post_eligibility_request(eligibility_request_id: int) -> int:
    """Post to each person who may decide it (and the team's channel) not yet told; a retry
    never posts twice to one place."""
    eligibility_request = _load_eligibility_request(eligibility_request_id)
    places = approver_slack_ids(eligibility_request)
    if channel_id := team_slack_channel_id(eligibility_request):
        places.append(channel_id)
    blocks, text = render_eligibility_request(eligibility_request)
    sent = 0
    for place in places:
        message, _ = EligibilitySlackMessage.objects.get_or_create(
            eligibility_request=eligibility_request, channel_id=place
        )
        if message.ts:
            continue
        answer = client().chat_postMessage(
            channel=place, blocks=blocks, text=text, unfurl_links=False, unfurl_media=False
        )
        message.ts = answer["ts"]
        message.rendered_status = eligibility_request.status
        message.save(update_fields=["ts", "rendered_status", "updated_at"])
        sent += 1
    # Decided while these went out: the update task may have found no message to update yet.
    if (
        EligibilityRequest.objects.filter(pk=eligibility_request_id)
        .exclude(status=eligibility_request.status)
        .exists()
    ):
        update_eligibility_request(eligibility_request_id)
    return sent


def update_eligibility_request(eligibility_request_id: int) -> int:
    """Bring every posted message about the eligibility request up to its current state."""
    eligibility_request = _load_eligibility_request(eligibility_request_id)
    blocks, text = render_eligibility_request(eligibility_request)
    updated = 0
    for message in eligibility_request.slack_messages.exclude(ts="").exclude(
        rendered_status=eligibility_request.status
    ):
        client().chat_update(channel=message.channel_id, ts=message.ts, blocks=blocks, text=text)
        message.rendered_status = eligibility_request.status
        message.save(update_fields=["rendered_status", "updated_at"])
        updated += 1
    return updated


def post_ephemeral(channel: str, user: str, text: str) -> None:
    client().chat_postEphemeral(channel=channel, user=user, text=escape(text))


def decision_modal(access_request: AccessRequest, *, verdict: str = "") -> dict:
    """The decision form: a verdict and a comment, which a denial must fill in (its reason).
    Opened by "Deny" with the denial chosen, or by "Comment…" with nothing chosen."""
    options = [{"text": plain("Deny"), "value": "deny"}]
    if slack_approvable(access_request):
        options.insert(0, {"text": plain("Approve"), "value": "approve"})
    verdict_element: dict = {"type": "radio_buttons", "action_id": "value", "options": options}
    chosen = [option for option in options if option["value"] == verdict]
    if chosen:
        verdict_element["initial_option"] = chosen[0]
    return {
        "type": "modal",
        "callback_id": MODAL,
        "private_metadata": str(access_request.pk),
        "title": plain("Decide request", 24),
        "submit": plain("Record decision", 24),
        "blocks": [
            {
                "type": "section",
                "text": plain(f"{access_request.privilege.name} for {access_request.agent.name}"),
            },
            {
                "type": "input",
                "block_id": "verdict",
                "label": plain("Decision"),
                "element": verdict_element,
            },
            {
                "type": "input",
                "block_id": "comment",
                "label": plain("Comment (a denial needs its reason)"),
                "optional": True,
                "element": {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "max_length": 2000,
                },
            },
        ],
    }
