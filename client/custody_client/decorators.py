"""`@requires("payments-db:write", intent=…)`: the function runs only under a live grant.

    @custody_client.requires("payments-db:write", intent="Fix invoice totals", duration="10m")
    def fix_invoices(rows, *, grant):
        db.connect(password=grant.access_token)
        ...

The grant is asked for on each call (blocking while people decide), passed as the `grant`
keyword when the function takes one, completed when the function returns, and a failure is
recorded first when it raises. Async functions get an `AsyncGrant` from an `AsyncClient`.
Without `client=`, one is made from the environment (`Client.from_env()`: CUSTODY_URL and
CUSTODY_SVID_FILE, SPIFFE_ENDPOINT_SOCKET or CUSTODY_DEV_AGENT)."""

from __future__ import annotations

import functools
import inspect
import threading
import uuid

from custody_client.client import AsyncClient, Client

_default: dict[type, object] = {}
_default_lock = threading.Lock()


def _client_from_env(kind: type):
    with _default_lock:
        if kind not in _default:
            _default[kind] = kind.from_env()
        return _default[kind]


def requires(
    privilege: str,
    *,
    intent,
    duration=600,
    task_id: str | None = None,
    wait=True,
    context: dict | None = None,
    client: Client | AsyncClient | None = None,
):
    """Run the decorated function under a grant of `privilege`. `task_id` defaults to the
    function's name and a fresh suffix per call; `intent` is a sentence or a dict."""

    def decorate(function):
        takes_grant = "grant" in inspect.signature(function).parameters

        def ask(kind):
            owner = client or _client_from_env(kind)
            task = task_id or f"{function.__name__}-{uuid.uuid4().hex[:12]}"
            return owner.request(privilege, task, intent, duration, wait=wait, context=context)

        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args, **kwargs):
                grant = await ask(AsyncClient)
                async with grant:
                    if takes_grant:
                        kwargs["grant"] = grant
                    return await function(*args, **kwargs)

            return run_async

        @functools.wraps(function)
        def run(*args, **kwargs):
            grant = ask(Client)
            with grant:
                if takes_grant:
                    kwargs["grant"] = grant
                return function(*args, **kwargs)

        return run

    return decorate
