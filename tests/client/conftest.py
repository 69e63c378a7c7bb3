"""The client against a live Custody: the test live server (as the schema fuzz uses) on the test
database, with agents whose SVIDs the tests mint (tests/identity.py)."""

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from custody_client import CallableSvidSource, Client
from django.conf import settings as django_settings

from tests.approvals.conftest import decide, privileges  # noqa: F401 (a fixture)
from tests.factories import AgentFactory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def svid_for(signer):
    """`svid_for(agent)`: a source that mints that agent's SVIDs for any audience."""

    def make(agent):
        return CallableSvidSource(lambda audience: signer.mint(agent.spiffe_id, audience=audience))

    return make


@pytest.fixture
def custody(live_server, agent, svid_for, privileges):  # noqa: F811
    """The invoice bot's client."""
    with Client(live_server.url, svid_for(agent), max_poll_seconds=5) as client:
        yield client


@pytest.fixture
def research_agent(db, agent, sponsor, team):
    """A second agent of the same sponsor (delegations between them are automatic)."""
    return AgentFactory(
        spiffe_id="spiffe://example.test/agents/research",
        name="Research",
        sponsor=sponsor,
        team=team,
    )


def wait_until(predicate, timeout: float = 20, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


class Background:
    """Runs a blocking client call in a thread; `result()` returns it or raises its error."""

    def __init__(self, function):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True)
        self._thread.start()

    def _run(self, function):
        try:
            self._value = function()
        except BaseException as exc:  # handed to the test
            self._error = exc
        finally:
            from django.db import connection

            connection.close()

    def result(self, timeout: float = 60):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not return"
        if self._error is not None:
            raise self._error
        return self._value


def approve_when_pending(user, *, privilege: str, comment="approved in a test", verdict="approve"):
    """Once the request for `privilege` is pending, `user` decides it through the people's API."""
    from approvals.models import AccessRequest

    resource, _, action = privilege.partition(":")
    pending = wait_until(
        lambda: (
            AccessRequest.objects.filter(
                privilege__resource=resource, privilege__action=action, status="pending"
            )
            .order_by("-pk")
            .first()
        )
    )
    response = decide(user, pending.pk, verdict, comment)
    assert response.status_code == 201, response.content
    return pending


def custody_cli(*args, url: str, svid_file=None, env=None, check=None):
    """The `custody` console script, run as an operator would, importing this worktree's
    custody_client (PYTHONPATH)."""
    script = Path(sys.executable).with_name("custody")
    environment = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'client'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "CUSTODY_URL": url,
        **({"CUSTODY_SVID_FILE": str(svid_file)} if svid_file else {}),
        **(env or {}),
    }
    for name in ("CUSTODY_DEV_AGENT", "SPIFFE_ENDPOINT_SOCKET"):
        if name not in (env or {}):
            environment.pop(name, None)
    # Run from elsewhere: the command needs the package, never the Django project.
    done = subprocess.run(
        [str(script), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.gettempdir(),
    )
    if check is not None:
        assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
    return done


def delegation_audience() -> str:
    return django_settings.CUSTODY_DELEGATION_AUDIENCE
