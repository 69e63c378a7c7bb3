"""Hear of revocation from Custody: Security Event Tokens (RFC 8417) pushed to a receiver
(RFC 8935) or fetched by a poll loop (RFC 8936), each verified (fail closed: a SET that does
not verify changes nothing and is refused) and applied to a Verifier's RevocationList.

    verifier = Verifier(issuer=..., audience="payments-db", set_audience=MY_SPIFFE_ID, ...)
    app = PushReceiver(verifier, authorization="Bearer <the secret set on the stream>")
    # mount `app` (WSGI) at the stream's endpoint URL, or:
    poller = Poller(verifier); poller.start()
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx

from custody_client.verify import Verifier

logger = logging.getLogger(__name__)

MAX_SET_BYTES = 64 * 1024


class InvalidSecurityEvent(Exception):
    """`code` is the RFC 8935 error code returned to the transmitter."""

    def __init__(self, code: str, description: str):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class SecurityEventNotVerifiedYet(Exception):
    """Custody's keys are out of reach: the SET is neither applied nor refused (a push gets
    503 and is retried; a polled one is left unacknowledged for the next poll)."""


class PushReceiver:
    """A WSGI app receiving RFC 8935 pushes: 202 when the SET verified and was applied, 400
    with an error code when it did not, 401 without the expected Authorization header."""

    def __init__(self, verifier: Verifier, *, authorization: str | None = None):
        self.verifier = verifier
        self.authorization = authorization

    def __call__(self, environ, start_response):
        def answer(status: str, body: dict | None = None, headers=()):
            payload = json.dumps(body).encode() if body is not None else b""
            head = [("Content-Length", str(len(payload))), *headers]
            if body is not None:
                head.append(("Content-Type", "application/json"))
            start_response(status, head)
            return [payload]

        if environ.get("REQUEST_METHOD") != "POST":
            return answer("405 Method Not Allowed", {"err": "invalid_request"}, [("Allow", "POST")])
        if self.authorization is not None and not hmac.compare_digest(
            environ.get("HTTP_AUTHORIZATION", "").encode(), self.authorization.encode()
        ):
            return answer("401 Unauthorized", {"err": "authentication_failed"})
        content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip()
        if content_type != "application/secevent+jwt":
            return answer(
                "400 Bad Request",
                {"err": "invalid_request", "description": "Content-Type secevent+jwt expected"},
            )
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if not 0 < length <= MAX_SET_BYTES:
            return answer("400 Bad Request", {"err": "invalid_request", "description": "size"})
        token = environ["wsgi.input"].read(length).decode("ascii", errors="replace").strip()
        try:
            self.verifier.accept_security_event(token)
        except InvalidSecurityEvent as exc:
            logger.warning("Refused a security event: %s", exc)
            return answer("400 Bad Request", {"err": exc.code, "description": exc.description})
        except SecurityEventNotVerifiedYet as exc:
            logger.warning("Cannot check a security event yet: %s", exc)
            return answer("503 Service Unavailable", None, [("Retry-After", "1")])
        return answer("202 Accepted")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # a push per revocation is not worth a log line each
        pass


class _ThreadingWSGIServer(WSGIServer):
    daemon_threads = True


def serve_push_receiver(
    receiver: PushReceiver, *, host: str = "127.0.0.1", port: int = 0
) -> tuple[WSGIServer, str]:
    """Serve `receiver` in a background thread (for small deployments and tests); returns the
    server (call `.shutdown()`) and its URL."""
    server = make_server(host, port, receiver, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="custody-push", daemon=True)
    thread.start()
    return server, f"http://{host}:{server.server_port}/"


class Poller:
    """An RFC 8936 poll loop in a thread: acknowledges what it applied, reports what it refused
    (`setErrs`), backs off when Custody is out of reach."""

    def __init__(
        self,
        verifier: Verifier,
        *,
        poll_url: str | None = None,
        max_events: int = 100,
        http: httpx.Client | None = None,
    ):
        if verifier.credentials is None:
            raise ValueError("polling needs the resource server's credentials on the Verifier")
        self.verifier = verifier
        self.poll_url = poll_url or f"{verifier.base_url}/api/v1/ssf/poll"
        self.max_events = max_events
        self.http = http or httpx.Client()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ack: list[str] = []
        self._errors: dict[str, dict] = {}

    def poll_once(self, *, return_immediately: bool = False) -> int:
        """One request: acknowledge, receive, verify and apply. Returns how many SETs applied."""
        response = self.http.post(
            self.poll_url,
            json={
                "ack": self._ack,
                "setErrs": self._errors,
                "maxEvents": self.max_events,
                "returnImmediately": return_immediately,
            },
            headers={"Authorization": f"Bearer {self.verifier.credentials()}"},
            timeout=60,
        )
        response.raise_for_status()
        self._ack, self._errors = [], {}
        body = response.json()
        applied = 0
        for jti, token in (body.get("sets") or {}).items():
            try:
                self.verifier.accept_security_event(token)
            except InvalidSecurityEvent as exc:
                logger.warning("Refused a polled security event %s: %s", jti, exc)
                self._errors[jti] = {"err": exc.code, "description": exc.description}
                continue
            except SecurityEventNotVerifiedYet as exc:
                logger.warning("Cannot check security event %s yet: %s", jti, exc)
                continue  # not acknowledged: Custody hands it out again
            self._ack.append(jti)
            applied += 1
        return applied

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.poll_once()
                backoff = 0.5
            except (httpx.HTTPError, ValueError) as exc:
                logger.warning("Polling Custody for security events failed: %s", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30)

    def start(self) -> Poller:
        self._thread = threading.Thread(target=self._run, name="custody-poll", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def wait(predicate, timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
