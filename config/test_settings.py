"""Settings for the test suite: production defaults (DEBUG off, secure cookies) plus test keys."""

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-any-deployment-0123456789")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")


def _isolate_xdist_worker() -> None:
    """Under pytest-xdist (`make test TEST_WORKERS=2`) each worker gets what the others must
    not touch: pytest-django gives it a test database of its own (test_<name>_gw0, ...); here it
    gets its own var/ (the SQLite files, the filesystem broker's folders, the beat lock) and its
    own Redis databases for the broker and the cache (the cache is flushed between tests).

    The environment is rewritten, once, before config.settings reads it, so the processes a test
    starts (Celery workers, gunicorn, `make run`) inherit the worker's URLs, not the shared ones.
    CUSTODY_TEST_WORKER marks it done: those processes load these settings again and must not
    move their databases a second time."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker or os.environ.get("CUSTODY_TEST_WORKER") == worker:
        return
    index = int(worker.removeprefix("gw"))
    base_var = os.environ.get("CUSTODY_VAR_DIR") or str(Path(__file__).resolve().parents[1] / "var")
    os.environ["CUSTODY_VAR_DIR"] = str(Path(base_var) / f"xdist-{worker}")
    # Redis: each worker shifts every Redis database number the run was given by the span they
    # cover (broker 0 and cache 1, as in CI: gw0 uses 0 and 1, gw1 uses 2 and 3, ...).
    names = [
        name
        for name in ("CELERY_BROKER_URL", "CACHE_URL")
        if os.environ.get(name, "").startswith(("redis://", "rediss://"))
    ]
    parsed = {name: urlsplit(os.environ[name]) for name in names}
    numbers = {name: int(parsed[name].path.strip("/") or 0) for name in names}
    if numbers:
        span = max(numbers.values()) - min(numbers.values()) + 1
        for name in names:
            number = numbers[name] + span * index
            if number > 15:
                raise RuntimeError(
                    f"pytest-xdist worker {worker} would need Redis database {number} for {name}:"
                    " run fewer workers (-n) or give lower database numbers."
                )
            os.environ[name] = urlunsplit(parsed[name]._replace(path=f"/{number}"))
    os.environ["CUSTODY_TEST_WORKER"] = worker


_isolate_xdist_worker()

from config.settings import *  # noqa: E402,F403

# Hashing passwords slowly is a production property; it only slows the suite down.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Checkpoints that test processes publish (a test worker's beat among them) go to a scratch file
# of their own, never to var/ where `make run`'s chain keeps its checkpoints.
if not os.environ.get("CUSTODY_CHECKPOINT_FILE"):
    CUSTODY_CHECKPOINT_FILE = Path(tempfile.gettempdir()) / f"custody-test-{os.getpid()}.jsonl"

# The webhook broker's tests talk to a receiver on 127.0.0.1 over plain http.
CUSTODY_BROKER_WEBHOOK_ALLOW_HTTP = True
