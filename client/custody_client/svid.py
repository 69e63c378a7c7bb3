"""Where an agent's JWT-SVIDs come from. A source answers `svid(audience)` with a JWT-SVID
naming that audience: Custody's login audience for every call, or the delegation audience for a
sub-agent's actor token.

- `FileSvidSource`: files as SPIRE's helper (spiffe-helper) writes them, re-read when they change.
- `WorkloadApiSvidSource`: the SPIFFE Workload API (`pip install custody-client[spiffe]`).
- `CallableSvidSource`: any function `audience -> token`.
- `DevSvidSource`: a development Custody's DEBUG-only minting endpoint (`custody --dev`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import httpx
import jwt

# A cached SVID is used until this many seconds before its `exp`.
EXPIRY_MARGIN_SECONDS = 30


class SvidUnavailable(Exception):
    """No SVID for that audience: the file is missing or the Workload API refused."""


@runtime_checkable
class SvidSource(Protocol):
    def svid(self, audience: str) -> str: ...


def token_expiry(token: str) -> float | None:
    """`exp` of a JWT, read without verifying (Custody verifies; we only schedule refreshes)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) else None


def token_times(token: str) -> dict:
    """`iat` and `exp` of a JWT (unverified), those present."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return {k: float(claims[k]) for k in ("iat", "exp") if isinstance(claims.get(k), int | float)}


class FileSvidSource:
    """JWT-SVIDs from files that spiffe-helper keeps fresh (`jwt_svids` with `jwt_svid_file_name`).

    `path` holds the login SVID; `paths` maps further audiences (the delegation audience) to their
    files. A file is read again whenever its modification time or size changes, so a rotated SVID
    is picked up on the next call without restarting the agent."""

    def __init__(
        self, path: str | os.PathLike, *, paths: dict[str, str | os.PathLike] | None = None
    ):
        self.path = Path(path)
        self.paths = {audience: Path(file) for audience, file in (paths or {}).items()}
        self._read: dict[Path, tuple[tuple[float, int], str]] = {}
        self._lock = threading.Lock()

    def _file_for(self, audience: str) -> Path:
        return self.paths.get(audience, self.path)

    def svid(self, audience: str) -> str:
        file = self._file_for(audience)
        try:
            stat = file.stat()
        except OSError as exc:
            raise SvidUnavailable(f"No SVID file at {file}: {exc.strerror}.") from exc
        stamp = (stat.st_mtime, stat.st_size)
        with self._lock:
            cached = self._read.get(file)
            if cached and cached[0] == stamp:
                return cached[1]
            token = file.read_text().strip()
            if not token:
                raise SvidUnavailable(f"The SVID file {file} is empty.")
            self._read[file] = (stamp, token)
            return token


class CallableSvidSource:
    """`function(audience) -> JWT-SVID`; its answers are cached until shortly before their `exp`
    (pass `cache=False` for a function that caches on its own)."""

    def __init__(self, function: Callable[[str], str], *, cache: bool = True):
        self.function = function
        self.cache = cache
        self._cached: dict[str, str] = {}
        self._lock = threading.Lock()

    def svid(self, audience: str) -> str:
        with self._lock:
            token = self._cached.get(audience)
            if token and (token_expiry(token) or 0) - EXPIRY_MARGIN_SECONDS > time.time():
                return token
        token = self.function(audience)
        if self.cache:
            with self._lock:
                self._cached[audience] = token
        return token


class WorkloadApiSvidSource(CallableSvidSource):
    """JWT-SVIDs from the SPIFFE Workload API (the SPIRE agent's socket): `socket_path`, or the
    `SPIFFE_ENDPOINT_SOCKET` environment variable. Needs the `spiffe` package
    (`pip install custody-client[spiffe]`)."""

    def __init__(self, socket_path: str | None = None, *, timeout: float = 10):
        try:
            from spiffe import WorkloadApiClient
        except ImportError as exc:  # the optional extra
            raise SvidUnavailable(
                "The SPIFFE Workload API needs the spiffe package: "
                "pip install 'custody-client[spiffe]'."
            ) from exc
        socket = socket_path or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
        if not socket:
            raise SvidUnavailable("Set SPIFFE_ENDPOINT_SOCKET or pass socket_path.")
        if "://" not in socket:
            socket = f"unix://{socket}"
        self.timeout = timeout
        self._client = WorkloadApiClient(socket_path=socket)
        super().__init__(self._fetch)

    def _fetch(self, audience: str) -> str:
        try:
            return self._client.fetch_jwt_svid({audience}, timeout=self.timeout).token
        except Exception as exc:  # the spiffe package's own errors, whatever their class
            raise SvidUnavailable(f"The Workload API gave no SVID for {audience}: {exc}") from exc

    def close(self) -> None:
        self._client.close()


class DevSvidSource(CallableSvidSource):
    """SVIDs minted by a development Custody (DEBUG on) for its local trust domain, through
    `POST /api/v1/dev/svid`. Custody refuses it with DEBUG off: never a production path."""

    def __init__(self, base_url: str, spiffe_id: str, *, ttl_seconds: int = 300, http=None):
        self.base_url = base_url.rstrip("/")
        self.spiffe_id = spiffe_id
        self.ttl_seconds = ttl_seconds
        self._http = http or httpx.Client(timeout=10)
        super().__init__(self._mint)

    def _mint(self, audience: str) -> str:
        from custody_client.errors import from_response

        response = self._http.post(
            f"{self.base_url}/api/v1/dev/svid",
            json={
                "spiffe_id": self.spiffe_id,
                "audience": audience,
                "ttl_seconds": self.ttl_seconds,
            },
        )
        body = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if response.status_code >= 400:
            raise from_response(response.status_code, body, response.headers)
        return body["svid"]


def as_source(source) -> SvidSource:
    """A source from what was given: a source, a callable, or a path to an SVID file."""
    if isinstance(source, SvidSource):
        return source
    if callable(source):
        return CallableSvidSource(source)
    if isinstance(source, str | os.PathLike):
        return FileSvidSource(source)
    raise TypeError(f"Not an SVID source: {source!r} (give a file path, a callable or a source).")
