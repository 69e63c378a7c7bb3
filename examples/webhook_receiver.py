"""A tiny receiver for Custody's webhook credential broker (docs/integrating.md).

It verifies each request with Custody's JWKS (ES256, type `custody-broker+jwt`, issuer,
audience, expiry, replayed `jti`), then provisions, removes or looks up an account in memory.
A real system would create the account in its own database, make it expire at `expires_at`
by itself, and answer the credential once.

    python examples/webhook_receiver.py --custody http://127.0.0.1:8000 --audience billing
"""

from __future__ import annotations

import argparse
import http.server
import json
import secrets
import threading
import time
import urllib.request

import jwt

REQUEST_TYPE = "custody-broker+jwt"


class Refused(Exception):
    pass


class Verifier:
    """Checks one request token. `jwks` is a JWKS document, or a callable returning one (called
    for each request here; a real receiver caches it and fetches again on an unknown `kid`)."""

    def __init__(self, *, issuer: str, audience: str, jwks):
        self.issuer, self.audience, self.jwks = issuer, audience, jwks
        self.seen_jti: dict[str, int] = {}
        self.lock = threading.Lock()

    def _key(self, kid: str):
        document = self.jwks() if callable(self.jwks) else self.jwks
        for jwk in document.get("keys", []):
            if jwk.get("kid") == kid:
                return jwt.PyJWK(jwk, algorithm="ES256").key
        raise Refused("unknown signing key")

    def verify(self, token: str) -> dict:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != REQUEST_TYPE or header.get("alg") != "ES256":
                raise Refused("not a Custody broker request")
            claims = jwt.decode(
                token,
                self._key(header.get("kid")),
                algorithms=["ES256"],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iat", "jti", "action", "credential"]},
            )
        except jwt.PyJWTError as exc:
            raise Refused(str(exc)) from exc
        with self.lock:  # a replayed request is refused while it could still verify
            now = int(time.time())
            self.seen_jti = {jti: exp for jti, exp in self.seen_jti.items() if exp > now}
            if claims["jti"] in self.seen_jti:
                raise Refused("replayed request")
            self.seen_jti[claims["jti"]] = claims["exp"]
        return claims


class Accounts:
    """The system's own accounts, in memory."""

    def __init__(self):
        self.live: dict[str, dict] = {}
        self.lock = threading.Lock()

    def act(self, claims: dict) -> tuple[int, dict]:
        name = claims["credential"]
        with self.lock:
            if claims["action"] == "create":
                password = secrets.token_urlsafe(24)
                self.live[name] = {"owner": claims.get("sub"), "until": claims.get("expires_at")}
                return 201, {"username": name, "password": password}
            if claims["action"] == "destroy":
                return (204, {}) if self.live.pop(name, None) else (404, {})
            if claims["action"] == "exists":
                return (200, {}) if name in self.live else (404, {})
        return 400, {"error": "unknown action"}


def make_handler(verifier: Verifier, accounts: Accounts):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            token = self.rfile.read(min(length, 16384)).decode(errors="replace")
            try:
                claims = verifier.verify(token)
            except Refused as exc:
                return self.answer(401, {"error": str(exc)})
            status, body = accounts.act(claims)
            return self.answer(status, body)

        def answer(self, status: int, body: dict):
            payload = json.dumps(body).encode() if status != 204 else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--custody", required=True, help="Custody's URL (its issuer)")
    parser.add_argument("--issuer", help="Custody's CUSTODY_ISSUER, if not its URL")
    parser.add_argument("--audience", required=True)
    parser.add_argument("--port", type=int, default=8900)
    args = parser.parse_args()
    custody = args.custody.rstrip("/")

    def fetch_jwks() -> dict:
        jwks_url = f"{custody}/.well-known/jwks.json"
        with urllib.request.urlopen(jwks_url, timeout=5) as response:  # noqa: S310
            return json.load(response)

    verifier = Verifier(issuer=args.issuer or custody, audience=args.audience, jwks=fetch_jwks)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", args.port), make_handler(verifier, Accounts())
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
