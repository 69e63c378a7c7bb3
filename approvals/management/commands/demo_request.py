"""`make demo-request [KIND=auto|one|two|critical|delegation] [PRIVILEGE=… DURATION=…]`: a demo
agent logs in with a fresh JWT-SVID and asks Custody for a privilege over HTTP, as an agent
would; then the command says, in words, what happened and who can finish it with which demo
login. The presets are in approvals/demo.py. It lives in approvals because it reads who may
approve (approvals.services) to say so."""

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from agents.dev_identity import DevIdentityRefused, ensure_dev_trust_domain, mint_svid
from approvals.demo import CUSTOM, DEFAULT_KIND, DEMO_PASSWORDS, PRESETS, parse_duration
from approvals.models import AccessRequest
from approvals.services import can_approve, is_initiator

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def in_words(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


class Command(BaseCommand):
    help = (
        "As a demo agent, log in with a fresh JWT-SVID and ask Custody for a privilege: "
        "--kind auto|one|two|critical|delegation, or --privilege/--duration of your own."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--kind", help=f"one of {', '.join(PRESETS)} (default {DEFAULT_KIND})")
        parser.add_argument("--agent", help="the agent's SPIFFE ID (default: the preset's)")
        parser.add_argument("--privilege", help="e.g. crm:read (default: the preset's)")
        parser.add_argument("--duration", help="seconds, or 30m, 1h (default: the preset's)")
        parser.add_argument(
            "--initiator", help="the demo person who asked the agent, or 'none' (the preset's)"
        )
        parser.add_argument(
            "--json", action="store_true", dest="show_json", help="also print Custody's answers"
        )

    # --- HTTP, as an agent ------------------------------------------------------------------

    def call(self, url: str, token: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(  # noqa: S310 (the operator's own Custody URL)
            url,
            method="POST",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=35) as response:  # noqa: S310
                status, answer = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                status, answer = exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                status, answer = exc.code, {}
        except OSError as exc:
            raise CommandError(
                f"Custody is not answering at {url}: {exc}. Is `make run` up?"
            ) from exc
        if self.show_json:
            self.stdout.write(json.dumps(answer, indent=2))
        return status, answer

    def refused(self, status: int, answer: dict) -> CommandError:
        error = answer.get("error") or {}
        message = error.get("message") or answer.get("error_description") or json.dumps(answer)
        return CommandError(f"Custody answered {status}: {message}")

    # --- the command ------------------------------------------------------------------------

    def handle(self, *args, url, kind, agent, privilege, duration, initiator, show_json, **options):
        self.show_json = show_json
        if kind is not None and kind not in PRESETS:
            raise CommandError(f"KIND={kind!r} is not a demo: choose one of {', '.join(PRESETS)}.")
        if kind is None and privilege:
            kind, preset = "custom", CUSTOM
        else:
            kind = kind or DEFAULT_KIND
            preset = PRESETS[kind]
        try:
            seconds = parse_duration(duration) if duration else preset.duration_seconds
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        initiator = preset.initiator if initiator is None else initiator
        if initiator and initiator.lower() == "none":
            initiator = None
        spiffe_id = agent or f"spiffe://{settings.CUSTODY_DEV_TRUST_DOMAIN}/{preset.agent}"
        context = {"environment": "production"}
        if initiator:
            email = (
                get_user_model()
                .objects.filter(username=initiator)
                .values_list("email", flat=True)
                .first()
            )
            context["initiated_by"] = email or initiator
        try:
            ensure_dev_trust_domain()
            token = mint_svid(spiffe_id, ttl_seconds=120)
        except (DevIdentityRefused, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        url = url.rstrip("/")
        task_id = f"demo-{kind}-{uuid.uuid4().hex[:8]}"
        status, answer = self.call(
            f"{url}/api/v1/requests",
            token,
            {
                "privilege": privilege or preset.privilege,
                "task_id": task_id,
                "duration_seconds": seconds,
                "intent": preset.intent,
                "context": context,
            },
        )
        if status != 201:
            raise self.refused(status, answer)
        who = f"initiated by {initiator}" if initiator else "no person initiated it"
        self.stdout.write(
            f"{spiffe_id} asked for {answer['privilege']} for {in_words(seconds)} "
            f"({preset.summary if not privilege and not duration else CUSTOM.summary}; "
            f"{who})."
        )
        self.describe(url, answer)
        if preset.delegate_to and not privilege:
            self.delegate(url, preset, token, answer, task_id)

    def delegate(self, url, preset, token, parent: dict, task_id: str) -> None:
        grant = parent.get("grant") or {}
        if not grant.get("access_token"):
            raise CommandError(
                f"The delegation needs the parent grant at once, but request #{parent['id']} "
                f"is {parent['status']}: finish it first, then delegate."
            )
        sub_agent = f"spiffe://{settings.CUSTODY_DEV_TRUST_DOMAIN}/{preset.delegate_to}"
        try:
            actor_token = mint_svid(
                sub_agent, ttl_seconds=120, audience=settings.CUSTODY_DELEGATION_AUDIENCE
            )
        except (DevIdentityRefused, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        status, answer = self.call(
            f"{url}/api/v1/token",
            token,
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": grant["access_token"],
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "actor_token": actor_token,
                "actor_token_type": JWT_TOKEN_TYPE,
                "scope": parent["privilege"],
                "duration_seconds": preset.delegated_duration_seconds,
                "task_id": f"{task_id}/sample",
                "intent": preset.delegated_intent,
            },
        )
        if status == 200:
            self.stdout.write(
                f"Delegated at once to {sub_agent}: grant #{answer['grant_id']} "
                f"(request #{answer['request_id']})."
            )
        elif status == 202:
            self.stdout.write(
                f"Then it handed {answer['privilege']} down to {sub_agent} for "
                f"{in_words(preset.delegated_duration_seconds)}; that agent has another "
                "sponsor, so people decide."
            )
            self.describe(url, answer)
        else:
            raise self.refused(status, answer)

    def describe(self, url: str, answer: dict) -> None:
        """Where the request stands, and who can finish it with which demo login."""
        request_id, status = answer["id"], answer["status"]
        page = f"{url}/requests/{request_id}/"
        if status == "approved":
            grant = answer.get("grant") or {}
            self.stdout.write(
                f"Request #{request_id} was granted at once by policy "
                f"({', '.join(answer['decision']['policies'])}): grant #{grant.get('id')}, "
                f"see it at {url}/grants/ or {page}"
            )
            return
        if status != "pending":
            reason = answer["decision"].get("final") or answer["decision"].get("reason")
            self.stdout.write(f"Request #{request_id} is {status}: {reason}")
            return
        needed = answer["approvals_required"] - answer["approvals_received"]
        self.stdout.write(
            f"Request #{request_id} waits for {needed} approval{'s' if needed != 1 else ''} "
            f"({answer['decision']['reason']}): {page}"
        )
        access_request = (
            AccessRequest.objects.select_related("agent", "privilege").filter(pk=request_id).first()
        )
        if access_request is None:  # the server uses another database than this command
            return
        eligible, initiators = [], []
        for username in DEMO_PASSWORDS:
            person = get_user_model().objects.filter(username=username).first()
            if person is None or not can_approve(person, access_request):
                continue
            (initiators if is_initiator(person, access_request) else eligible).append(person)
        logins = ", ".join(f"{p.username} / {DEMO_PASSWORDS[p.username]}" for p in eligible)
        self.stdout.write(f"  May approve (demo logins): {logins or 'none of the demo people'}")
        for person in initiators:
            self.stdout.write(f"  {person.username} initiated it, so may not approve it.")
        if access_request.privilege.risk == "critical":
            self.stdout.write(
                "  Critical: each approver signs in again (or confirms the password) within "
                "10 minutes before approving, and writes a comment."
            )
