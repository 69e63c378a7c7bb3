"""A small OpenID Connect provider for tests: a real HTTP server in a thread.

It serves the discovery document, an /authorize endpoint that signs in whoever the test says
(`provider.person`) and redirects back with a code, a /token endpoint that checks the client's
secret, the redirect URI and the PKCE verifier before answering with an id_token signed by its
own key (tests/identity.py), /userinfo for the access token it issued, and /jwks."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import threading
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt

from tests.identity import SigningIdentity


class OpenIDProvider:
    def __init__(self, *, client_id: str = "custody-web", client_secret: str = "s3cret-for-tests"):
        self.client_id = client_id
        self.client_secret = client_secret
        self.key = SigningIdentity("RS256")
        self.person: dict = {}  # the claims of whoever is signed in at the provider
        self.authorize_requests: list[dict] = []
        self.token_requests: list[dict] = []
        self._codes: dict[str, dict] = {}
        self._access_tokens: dict[str, dict] = {}
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OpenIDProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- what the provider answers ----------------------------------------------------------

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
        }

    def authorize(self, query: dict) -> tuple[int, dict]:
        self.authorize_requests.append(query)
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return 400, {"error": "invalid_request"}
        code = secrets.token_urlsafe(16)
        self._codes[code] = {"query": query, "person": dict(self.person)}
        back = {"code": code, "state": query.get("state", "")}
        return 302, {"Location": f"{query['redirect_uri']}?{urlencode(back)}"}

    def token(self, form: dict, authorization: str) -> tuple[int, dict]:
        self.token_requests.append(form)
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization.startswith("Basic "):
            client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
        if (client_id, secret) != (self.client_id, self.client_secret):
            return 401, {"error": "invalid_client"}
        issued = self._codes.pop(form.get("code", ""), None)  # a code is good once
        if issued is None or form.get("redirect_uri") != issued["query"]["redirect_uri"]:
            return 400, {"error": "invalid_grant"}
        challenge = issued["query"].get("code_challenge")
        if challenge:
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != challenge:
                return 400, {"error": "invalid_grant", "error_description": "PKCE"}
        person = issued["person"]
        access_token = secrets.token_urlsafe(24)
        self._access_tokens[access_token] = person
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": issued["query"].get("nonce"),
            **person,
        }
        id_token = jwt.encode(
            {name: value for name, value in claims.items() if value is not None},
            self.key.private_key,
            algorithm="RS256",
            headers={"kid": self.key.kid},
        )
        return 200, {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
        }

    def userinfo(self, authorization: str) -> tuple[int, dict]:
        person = self._access_tokens.get(authorization.removeprefix("Bearer "))
        if person is None:
            return 401, {"error": "invalid_token"}
        return 200, person

    # --- HTTP ---------------------------------------------------------------------------------

    def _handler(self):
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict) -> None:
                if status == 302:
                    self.send_response(302)
                    self.send_header("Location", body["Location"])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                url = urlsplit(self.path)
                query = {name: values[0] for name, values in parse_qs(url.query).items()}
                auth = self.headers.get("Authorization", "")
                if url.path == "/.well-known/openid-configuration":
                    self._answer(200, provider.discovery())
                elif url.path == "/jwks":
                    self._answer(200, provider.key.jwks)
                elif url.path == "/authorize":
                    self._answer(*provider.authorize(query))
                elif url.path == "/userinfo":
                    self._answer(*provider.userinfo(auth))
                else:
                    self._answer(404, {"error": "not_found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = {
                    name: values[0]
                    for name, values in parse_qs(self.rfile.read(length).decode()).items()
                }
                if urlsplit(self.path).path == "/token":
                    self._answer(*provider.token(form, self.headers.get("Authorization", "")))
                else:
                    self._answer(404, {"error": "not_found"})

            def log_message(self, *args):
                pass

        return Handler
