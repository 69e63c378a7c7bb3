"""Settings for the test suite: production defaults (DEBUG off, secure cookies) plus test keys."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-any-deployment-0123456789")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")

from config.settings import *  # noqa: E402,F403

# Hashing passwords slowly is a production property; it only slows the suite down.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Checkpoints that test processes publish (a test worker's beat among them) go to a scratch file
# of their own, never to var/ where `make run`'s chain keeps its checkpoints.
if not os.environ.get("CUSTODY_CHECKPOINT_FILE"):
    CUSTODY_CHECKPOINT_FILE = Path(tempfile.gettempdir()) / f"custody-test-{os.getpid()}.jsonl"

# The webhook broker's tests talk to a receiver on 127.0.0.1 over plain http.
CUSTODY_BROKER_WEBHOOK_ALLOW_HTTP = True
