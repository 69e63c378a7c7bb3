"""WSGI and ASGI middleware that admit only requests bearing a Custody access token good for
this resource server; the VerifiedToken is in `environ["custody.token"]` (WSGI) or
`scope["custody.token"]` (ASGI). Refusals are 401 (403 for a missing scope) with an RFC 6750
`WWW-Authenticate` header and a JSON body saying why."""

from __future__ import annotations

import asyncio
import json

from custody_client.verify import InsufficientScope, TokenRejected, Verifier


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _refusal(exc: TokenRejected) -> tuple[int, list[tuple[str, str]], bytes]:
    error = "insufficient_scope" if isinstance(exc, InsufficientScope) else "invalid_token"
    status = 403 if isinstance(exc, InsufficientScope) else 401
    description = exc.reason.replace('"', "'")
    body = json.dumps({"error": error, "error_description": exc.reason}).encode()
    return (
        status,
        [
            ("WWW-Authenticate", f'Bearer error="{error}", error_description="{description}"'),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ],
        body,
    )


class WsgiVerifyMiddleware:
    def __init__(self, app, verifier: Verifier, *, scope: str | None = None):
        self.app = app
        self.verifier = verifier
        self.scope = scope

    def __call__(self, environ, start_response):
        try:
            token = self.verifier.verify(_bearer(environ.get("HTTP_AUTHORIZATION", "")))
            if self.scope:
                token.require_scope(self.scope)
        except TokenRejected as exc:
            status, headers, body = _refusal(exc)
            reason = "Forbidden" if status == 403 else "Unauthorized"
            start_response(f"{status} {reason}", headers)
            return [body]
        environ["custody.token"] = token
        return self.app(environ, start_response)


class AsgiVerifyMiddleware:
    def __init__(self, app, verifier: Verifier, *, scope: str | None = None):
        self.app = app
        self.verifier = verifier
        self.required_scope = scope

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        bearer = _bearer(headers.get(b"authorization", b"").decode("latin-1"))
        try:
            # Verification may fetch Custody's keys: off the event loop.
            token = await asyncio.to_thread(self.verifier.verify, bearer)
            if self.required_scope:
                token.require_scope(self.required_scope)
        except TokenRejected as exc:
            status, response_headers, body = _refusal(exc)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in response_headers],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return None
        scope["custody.token"] = token
        return await self.app(scope, receive, send)
