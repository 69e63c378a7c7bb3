"""Fixtures shared by the agents tests: an OIDC issuer whose JWKS is served over https (a
self-signed certificate Custody is told to trust), or plain http to be refused."""

import contextlib
import http.server
import ipaddress
import json
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agents.models import Agent
from tests.factories import AgentFactory, TrustDomainFactory
from tests.identity import SigningIdentity


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="session")
def jwks_tls(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("jwks-tls"))


@contextlib.contextmanager
def serving_jwks(tls: tuple[Path, Path] | None):
    """A JWKS server on 127.0.0.1, over TLS when given (cert, key). `/moved` redirects to the
    JWKS; `hits` counts the JWKS served, `redirects` the redirects answered."""
    served = {"document": {"keys": []}, "hits": 0, "redirects": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/moved":
                served["redirects"] += 1
                self.send_response(302)
                self.send_header("Location", served["url"])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
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
    scheme = "http"
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"{scheme}://127.0.0.1:{server.server_port}"
    served["url"] = f"{base}/jwks.json"
    served["moved_url"] = f"{base}/moved"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def jwks_server(settings, jwks_tls):
    """An issuer's JWKS over https, its certificate trusted through CUSTODY_JWKS_CA_FILE."""
    settings.CUSTODY_JWKS_CA_FILE = str(jwks_tls[0])
    with serving_jwks(jwks_tls) as served:
        yield served


@pytest.fixture
def plain_http_jwks_server():
    with serving_jwks(None) as served:
        yield served


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
