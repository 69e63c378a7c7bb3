"""gunicorn's settings that follow Custody's: it believes forwarded headers (X-Forwarded-Proto)
only from TRUSTED_PROXIES, the same list Django reads client addresses through. Empty means no
peer is believed. gunicorn loads this file from the working directory (the image's /app)."""

import os
import shutil
from pathlib import Path

from core.client_ip import parse_trusted_proxies
from core.env import env_bool, env_list, env_str

forwarded_allow_ips = ",".join(
    str(network) for network in parse_trusted_proxies(env_list("TRUSTED_PROXIES", []))
)


def on_starting(server):
    # prometheus-client's multiprocess mode: each run starts from an empty directory.
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        Path(folder).mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# gunicorn's own lines (start, worker restarts, timeouts) in the same format as Custody's.
_log_format = env_str("CUSTODY_LOG_FORMAT") or ("plain" if env_bool("DEBUG", False) else "json")
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "core.log_context.PlainFormatter"},
        "json": {"()": "core.log_context.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": _log_format if _log_format in ("json", "plain") else "plain",
            "stream": "ext://sys.stderr",
        },
    },
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
    },
}
