"""/healthz (the process answers), /readyz (what serving needs answers), /version.

Readiness checks, each bounded by a short timeout: the database, the Redis cache, the Celery
broker, beat's heartbeat (the newest dispatch django-celery-beat recorded) and the signing key.
A 503 names what failed, so an operator reading a probe's output knows where to look."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _cache() -> None:
    key = "custody:readyz"
    cache.set(key, "ok", 30)
    if cache.get(key) != "ok":
        raise RuntimeError("the cache did not keep a value")


def _broker() -> None:
    from config.celery import app

    with app.connection_for_write() as broker:
        broker.ensure_connection(max_retries=1, timeout=2)


def _beat() -> None:
    from django_celery_beat.models import PeriodicTask

    last_run = (
        PeriodicTask.objects.filter(enabled=True, last_run_at__isnull=False)
        .order_by("-last_run_at")
        .values_list("last_run_at", flat=True)
        .first()
    )
    limit = timedelta(seconds=settings.CUSTODY_BEAT_HEARTBEAT_SECONDS)
    if last_run is None or timezone.now() - last_run > limit:
        raise RuntimeError(f"beat has dispatched nothing in {limit.total_seconds():.0f} s")


def _signing_key() -> None:
    from approvals.tokens import signing_key_check

    signing_key_check()


CHECKS = {
    "database": _database,
    "cache": _cache,
    "broker": _broker,
    "beat": _beat,
    "signing_key": _signing_key,
}


@never_cache
def healthz(request):
    return JsonResponse({"status": "alive"})


@never_cache
def readyz(request):
    results = {}
    for name, check in CHECKS.items():
        if name == "beat" and results.get("database", {}).get("status") != "ok":
            results[name] = {"status": "unknown", "error": "needs the database"}
            continue
        if name == "signing_key" and results.get("database", {}).get("status") != "ok":
            results[name] = {"status": "unknown", "error": "needs the database"}
            continue
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure is "not ready", with its reason
            results[name] = {"status": "failing", "error": f"{type(exc).__name__}: {exc}"[:300]}
            if name == "database":
                connection.close()  # the next probe starts from a fresh connection
        else:
            results[name] = {"status": "ok"}
        results[name]["seconds"] = round(time.perf_counter() - started, 4)
    ready = all(result["status"] == "ok" for result in results.values())
    return JsonResponse(
        {"status": "ready" if ready else "unready", "checks": results},
        status=200 if ready else 503,
    )


@never_cache
def version(request):
    return JsonResponse({"version": settings.CUSTODY_VERSION, "commit": settings.CUSTODY_COMMIT})
