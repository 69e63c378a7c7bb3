"""Container health checks for docker-compose: `python deploy/healthcheck.py web|beat`.

Exit 0 when healthy. `web` asks gunicorn for /healthz as the first ALLOWED_HOSTS name (a 400
here means the deployment's host settings are wrong, which is unhealthy too); `ready` asks for
/readyz (database, cache, broker, beat's heartbeat, the signing key), for an orchestrator that
routes traffic only to ready instances. `beat`
asks the database whether the scheduler has dispatched anything in the last ten minutes: the
sweeps run every few seconds, so a live beat always has.
"""

import http.client
import os
import sys
from datetime import timedelta


def _answers_200(path: str) -> bool:
    first_host = (os.environ.get("ALLOWED_HOSTS") or "localhost").split(",")[0].strip()
    host = first_host.lstrip(".") if first_host not in ("", "*") else "localhost"
    port = int(os.environ.get("PORT", "8000"))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        status = connection.getresponse().status
    except OSError:
        return False
    finally:
        connection.close()
    return status == 200


def web_is_healthy() -> bool:
    return _answers_200("/healthz")


def web_is_ready() -> bool:
    return _answers_200("/readyz")


def beat_is_healthy() -> bool:
    import django

    django.setup()
    from django.utils import timezone
    from django_celery_beat.models import PeriodicTask

    last_run = (
        PeriodicTask.objects.filter(enabled=True, last_run_at__isnull=False)
        .order_by("-last_run_at")
        .values_list("last_run_at", flat=True)
        .first()
    )
    return last_run is not None and timezone.now() - last_run < timedelta(minutes=10)


if __name__ == "__main__":
    checks = {"web": web_is_healthy, "ready": web_is_ready, "beat": beat_is_healthy}
    if len(sys.argv) != 2 or sys.argv[1] not in checks:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(checks)}")
    sys.exit(0 if checks[sys.argv[1]]() else 1)
