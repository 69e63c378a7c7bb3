import json
import urllib.error
import urllib.request
import uuid

from django.core.management.base import BaseCommand, CommandError

from agents.dev_identity import DevIdentityRefused, ensure_dev_trust_domain, mint_svid


class Command(BaseCommand):
    help = "As a demo agent, log in with a fresh JWT-SVID and ask Custody for a privilege."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--agent", required=True, help="the agent's SPIFFE ID")
        parser.add_argument("--privilege", default="payments-db:read")
        parser.add_argument("--duration", type=int, default=600)

    def call(self, method: str, url: str, token: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(  # noqa: S310 (the operator's own Custody URL)
            url,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=35) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")
        except OSError as exc:
            raise CommandError(f"Custody is not answering at {url}: {exc}") from exc

    def handle(self, *args, url, agent, privilege, duration, **options):
        try:
            ensure_dev_trust_domain()
            token = mint_svid(agent, ttl_seconds=120)
        except DevIdentityRefused as exc:
            raise CommandError(str(exc)) from exc
        answer = self.call(
            "POST",
            f"{url}/api/v1/requests",
            token,
            {
                "privilege": privilege,
                "task_id": f"demo-{uuid.uuid4().hex[:8]}",
                "duration_seconds": duration,
                "intent": {
                    "action": "reconcile invoices",
                    "target": "invoices for last week",
                    "justification": "Nightly reconciliation found 3 mismatched invoices.",
                },
                "context": {"environment": "production", "initiated_by": "alice@example.com"},
            },
        )
        self.stdout.write(json.dumps(answer, indent=2))
