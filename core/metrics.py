"""Prometheus metrics: the counters processes keep, HTTP latency by route, and /metrics.

prometheus-client itself, in multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set (gunicorn's
workers and a prefork Celery worker's children write there; one scrape sums them). Gauges that
are database facts are not kept here: apps register collectors (`register_facts`) that query them
at scrape time, so every process answers the same number and a restart loses nothing.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterable

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import REGISTRY, Collector

HTTP_LATENCY = Histogram(
    "custody_http_request_duration_seconds",
    "Time to answer an HTTP request, by route name (never the raw path), method and status class.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
AGENT_LOGIN_REJECTIONS = Counter(
    "custody_agent_login_rejections_total",
    "Agent logins (workload identity tokens) refused, by reason.",
    ["reason"],
)
JWKS_FETCH_FAILURES = Counter(
    "custody_jwks_fetch_failures_total",
    "Failed fetches of a trust domain's JWKS, by trust domain.",
    ["trust_domain"],
)
DECISIONS = Counter(
    "custody_decisions_total",
    "Decisions recorded on access requests, by channel (web, slack, api, policy) and verdict.",
    ["channel", "verdict"],
)
CELERY_TASKS = Counter(
    "custody_celery_tasks_total",
    "Celery tasks this worker finished, by task name and state (SUCCESS, FAILURE, RETRY).",
    ["task", "state"],
)

FactCollector = Callable[[], Iterable]
_facts: list[FactCollector] = []


def register_facts(collect: FactCollector) -> FactCollector:
    """Register a function yielding metric families computed at scrape time (database facts)."""
    if collect not in _facts:
        _facts.append(collect)
    return collect


class _Facts(Collector):
    def collect(self):
        for collect in _facts:
            yield from collect()


_facts_registry = CollectorRegistry(auto_describe=False)
_facts_registry.register(_Facts())


def process_registry() -> CollectorRegistry:
    """This process's counters, or every process's when they share PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exposition(*, facts: bool = True) -> bytes:
    """The text a scrape gets: the process counters, then the database facts."""
    text = generate_latest(process_registry())
    if facts:
        text += generate_latest(_facts_registry)
    return text


def _peer_allowed(address: str) -> bool:
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(peer in ipaddress.ip_network(net) for net in settings.CUSTODY_METRICS_NETWORKS)


def _token_matches(request) -> bool:
    expected = settings.CUSTODY_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    return bool(expected) and hmac.compare_digest(header.encode(), f"Bearer {expected}".encode())


def metrics_view(request):
    """GET /metrics: for CUSTODY_METRICS_TOKEN's bearer, or a peer in CUSTODY_METRICS_NETWORKS."""
    if not (_token_matches(request) or _peer_allowed(request.META.get("REMOTE_ADDR", ""))):
        return HttpResponse(
            "Metrics are served only to the configured scrapers: send "
            "'Authorization: Bearer <CUSTODY_METRICS_TOKEN>' or scrape from a network in "
            "CUSTODY_METRICS_NETWORKS.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class MetricsMiddleware:
    """HTTP latency by the matched route's name, so /api/v1/grants/17 and /18 are one series."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = (match.view_name or match.route) if match else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        HTTP_LATENCY.labels(
            route=route, method=method, status=f"{response.status_code // 100}xx"
        ).observe(time.perf_counter() - started)
        return response
