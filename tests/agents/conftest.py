"""Fixtures shared by the agents tests: an OIDC issuer whose JWKS is served over HTTP."""

import http.server
import json
import threading

import pytest

from agents.models import Agent
from tests.factories import AgentFactory, TrustDomainFactory
from tests.identity import SigningIdentity


@pytest.fixture
def jwks_server():
    served = {"document": {"keys": []}, "hits": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served["hits"] += 1
            body = json.dumps(served["document"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served["url"] = f"http://127.0.0.1:{server.server_port}/jwks.json"
    yield served
    server.shutdown()


@pytest.fixture
def oidc_agent(db, sponsor, team, jwks_server):
    """A CI system's OIDC issuer whose keys Custody fetches by URL (and caches); the agent
    it vouches for is bound to it."""
    issuer_key = SigningIdentity("RS256")
    jwks_server["document"] = issuer_key.jwks
    domain = TrustDomainFactory(
        name="ci-oidc",
        kind="oidc",
        issuer="https://token.ci.example",
        jwks=None,
        jwks_url=jwks_server["url"],
    )
    agent = AgentFactory(
        spiffe_id="spiffe://example.test/agents/ci-bot", sponsor=sponsor, team=team
    )
    Agent.objects.filter(pk=agent.pk).update(
        oidc_trust_domain=domain, oidc_subject="repo:acme/payments:ref:main"
    )
    return issuer_key
