"""A fake Slack Web API on 127.0.0.1 that the real slack-sdk WebClient talks to.

It records every call and can be told to answer the next calls of a method with an error
(429 with Retry-After, 500), or to go down and come back on the same port.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs


@dataclass
class Call:
    method: str
    params: dict
    at: float
    status: int


@dataclass
class FakeSlack:
    port: int = 0
    calls: list[Call] = field(default_factory=list)
    failures: dict[str, list[tuple[int, dict]]] = field(default_factory=dict)
    _server: http.server.ThreadingHTTPServer | None = None
    _counter: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def fail_next(self, method: str, status: int, headers: dict | None = None, times: int = 1):
        self.failures.setdefault(method, []).extend([(status, headers or {})] * times)

    def fail_after(self, method: str, status: int, *, successes: int = 1):
        """Answer the next `successes` calls of `method` normally, then fail one with `status`."""
        self.failures.setdefault(method, []).extend([(200, {})] * successes + [(status, {})])

    def of(self, method: str, ok_only: bool = True) -> list[Call]:
        return [c for c in self.calls if c.method == method and (c.status == 200 or not ok_only)]

    def wait_for(self, predicate, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def reset(self) -> None:
        self.calls.clear()
        self.failures.clear()

    def _answer(self, method: str, params: dict) -> tuple[int, dict, dict]:
        with self._lock:
            queued = self.failures.get(method) or []
            status, headers = queued.pop(0) if queued else (200, {})
            if status != 200:
                return (
                    status,
                    headers,
                    {"ok": False, "error": "ratelimited" if status == 429 else "internal_error"},
                )
            self._counter += 1
            ts = f"1700000000.{self._counter:06d}"
        body = {"ok": True}
        if method == "chat.postMessage":
            body.update(channel=params.get("channel"), ts=ts)
        if method == "chat.update":
            body.update(channel=params.get("channel"), ts=params.get("ts"))
        if method == "views.open":
            body.update(view={"id": "V1"})
        return 200, {}, body

    def start(self) -> FakeSlack:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                method = self.path.rsplit("/", 1)[-1]
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if "json" in (self.headers.get("Content-Type") or ""):
                    params = json.loads(raw or "{}")
                else:
                    params = {k: v[0] for k, v in parse_qs(raw).items()}
                    for key in ("blocks", "view"):
                        if isinstance(params.get(key), str):
                            params[key] = json.loads(params[key])
                status, headers, body = fake._answer(method, params)
                fake.calls.append(Call(method, params, time.time(), status))
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
