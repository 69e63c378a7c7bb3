"""A system that provisions its own accounts, on 127.0.0.1: the receiver of
examples/webhook_receiver.py (it verifies Custody's signature with Custody's JWKS), which also
records what it saw, can be told to answer the next requests with something else, and can go
down and come back on the same port."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from dataclasses import dataclass, field

from examples.webhook_receiver import Accounts, Verifier, make_handler
from tests.workers import free_port


@dataclass
class Seen:
    status: int
    claims: dict | None
    refusal: str = ""


@dataclass
class FakeWebhook:
    issuer: str
    audience: str
    jwks: object  # a JWKS document or a callable returning one
    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)
    # (status, raw body) answered instead of the real work, oldest first
    overrides: list[tuple[int, bytes]] = field(default_factory=list)
    accounts: Accounts = field(default_factory=Accounts)
    tls: tuple | None = None  # (cert.pem, key.pem): serve https
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/custody/credentials"

    def answer_next(self, status: int, body: bytes = b"", times: int = 1) -> None:
        self.overrides.extend([(status, body)] * times)

    def actions(self, action: str, status: int | None = None) -> list[dict]:
        return [
            s.claims
            for s in self.seen
            if s.claims and s.claims["action"] == action and status in (None, s.status)
        ]

    def wait_for(self, predicate, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def start(self) -> FakeWebhook:
        verifier = Verifier(issuer=self.issuer, audience=self.audience, jwks=self.jwks)
        base = make_handler(verifier, self.accounts)
        fake = self

        class Handler(base):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                token = self.rfile.read(length).decode(errors="replace")
                try:
                    claims = verifier.verify(token)
                except Exception as exc:  # Refused
                    fake.seen.append(Seen(401, None, str(exc)))
                    return self.answer(401, {"error": str(exc)})
                if fake.overrides:
                    status, body = fake.overrides.pop(0)
                    fake.seen.append(Seen(status, claims))
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return None
                status, answer = fake.accounts.act(claims)
                fake.seen.append(Seen(status, claims))
                return self.answer(status, answer)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
