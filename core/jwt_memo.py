"""A per-process memo of JWTs whose signature and claims already verified.

A bearer token is presented again and again within its short life (an agent's login SVID on
every call, an access token at every introspection), and checking an ES256 signature is the
most expensive step of a request. Verification is a pure function of the token, the key and
the checks asked for (algorithm, audience, issuer, leeway, required claims), except for time.
So the claims are remembered under the token's SHA-256 *and* all of those inputs: a rotated or
removed key, a changed audience or issuer is a different key and verifies afresh. Time is
checked again at every use (exp, nbf, iat with the same leeway); a token outside its window is
not answered from the memo, so the full verification raises exactly the error it always did.
Nothing else is decided here: who the token names, whether that agent is active, whether the
grant lives are read fresh by the callers at every call."""

from __future__ import annotations

import hashlib
import threading
import time


class VerifiedTokens:
    def __init__(self, size: int = 10_000):
        self.size = size
        self._entries: dict[tuple, dict] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str, inputs: tuple) -> tuple:
        return hashlib.sha256(token.encode()).digest(), inputs

    def get(self, token: str, inputs: tuple, *, leeway: float = 0) -> dict | None:
        """The remembered claims (a copy), or None: never seen with these inputs, or outside
        its time window now."""
        claims = self._entries.get(self._key(token, inputs))
        if claims is None:
            return None
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or not now < exp + leeway:
            return None
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None and (not isinstance(value, int | float) or value > now + leeway):
                return None
        return dict(claims)

    def put(self, token: str, inputs: tuple, claims: dict) -> None:
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.clear()  # bounded; a cleared memo costs one verification a token
            self._entries[self._key(token, inputs)] = dict(claims)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
