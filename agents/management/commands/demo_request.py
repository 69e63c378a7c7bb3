import json
import urllib.error
import urllib.request

from django.core.management.base import BaseCommand, CommandError

from agents.dev_identity import ensure_dev_trust_domain, mint_svid


class Command(BaseCommand):
    help = "As a demo agent, authenticate with a fresh JWT-SVID and call the running Custody."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--agent", required=True, help="the agent's SPIFFE ID")

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

    def handle(self, *args, url, agent, **options):
        ensure_dev_trust_domain()
        token = mint_svid(agent, ttl_seconds=120)
        me = self.call("GET", f"{url}/api/v1/agents/me", token)
        self.stdout.write(json.dumps(me, indent=2))
