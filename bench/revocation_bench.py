"""Revocation latency: a person revokes a grant → a resource server that verifies Custody's
tokens locally refuses its token. p50/p99/max over N revocations (goal: p99 ≤ 1 s with push).

    PYTHONPATH=client .venv/bin/python bench/revocation_bench.py [--revocations 1000] [--mode push]

Drops, creates and migrates its own PostgreSQL database (custody_bench_revocation), starts its
own redis-server on a free port (broker db 0, cache db 1), and runs in this process: Custody's
WSGI app on a threaded local server (the JWKS, the API the agent calls, the RFC 8936 poll
endpoint) and the resource server's `custody_client` Verifier with its push receiver (RFC 8935)
or poll loop. One `celery -A config worker --queues=notifications --pool=solo` subprocess (the
Procfile's notify worker) pushes the Security Event Tokens.

For each revocation: the agent asks for `payments-db:read` over HTTP (approved automatically)
and the verifier accepts its token; then the clock starts, `grant_revoke` runs (what the revoke
page and admin action call), and the clock stops when the verifier refuses the token
(TokenRevoked). So each figure is commit + outbox → broker → worker → signed POST → verified and
applied, end to end. Revocations run one after another (no queueing behind each other).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "client"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

DB_NAME = "custody_bench_revocation"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
GOAL_P99_SECONDS = 1.0


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def start_redis(var_dir: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis_server = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            var_dir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return redis_server, port
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def environment(var_dir: str, redis_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DEBUG="false",
        SECRET_KEY="bench-only-secret-key-revocation-0123456789abcdef",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        CACHE_URL=f"redis://127.0.0.1:{redis_port}/1",
        CUSTODY_VAR_DIR=var_dir,
        LOG_LEVEL="WARNING",
        PYTHONPATH=f"{ROOT}:{ROOT / 'client'}",
        CUSTODY_CUMULATIVE_FACTOR="0",
        CUSTODY_MAX_PENDING_PER_AGENT="1000000",
    )
    return env


def reset_database(env: dict) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )


def start_worker(env: dict, log_path: Path) -> subprocess.Popen:
    log = log_path.open("w")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool=solo",
            "--queues=notifications",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--hostname=revocation-bench-{os.getpid()}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120  # start-up stays out of the figures
    while " ready." not in log_path.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            stop(worker)
            raise RuntimeError(log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.2)
    return worker


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def run(mode: str, revocations: int, seeded, custody_url: str, signer) -> list[float]:
    import httpx
    from custody_client.events import Poller, PushReceiver, serve_push_receiver
    from custody_client.verify import TokenRevoked, Verifier
    from django.conf import settings

    from approvals.models import Grant
    from approvals.services import grant_revoke
    from audit.services import Actor
    from bench.api_bench import AGENT_SPIFFE_ID, INTENT, SERVER_SPIFFE_ID
    from ssf.models import Stream
    from ssf.services import stream_save

    verifier = Verifier(
        issuer=settings.CUSTODY_ISSUER,
        audience="payments-db",
        base_url=custody_url,
        credentials=lambda: signer.mint(SERVER_SPIFFE_ID),
        set_audience=SERVER_SPIFFE_ID,
    )
    Stream.objects.filter(receiver=seeded.server).delete()
    receiver_server = poller = None
    if mode == "push":
        receiver_server, url = serve_push_receiver(
            PushReceiver(verifier, authorization="Bearer bench")
        )
        stream = Stream(receiver=seeded.server, delivery="push", endpoint_url=url)
        stream.authorization_header = "Bearer bench"
    else:
        stream = Stream(receiver=seeded.server, delivery="poll")
    stream_save(stream=stream, actor=Actor.system("bench"))
    if mode == "poll":
        poller = Poller(verifier).start()

    agent_http = httpx.Client(base_url=custody_url, timeout=30)
    svid = signer.mint(AGENT_SPIFFE_ID)
    latencies = []
    try:
        for n in range(revocations):
            answer = agent_http.post(
                "/api/v1/requests",
                json={
                    "privilege": "payments-db:read",
                    "task_id": f"{mode}-{n}",
                    "duration_seconds": 600,
                    "intent": INTENT,
                },
                headers={"Authorization": f"Bearer {svid}"},
            ).json()
            grant_id, token = answer["grant"]["id"], answer["grant"]["access_token"]
            verifier.verify(token)
            started = time.perf_counter()
            grant_revoke(grant=Grant.objects.get(pk=grant_id), actor=Actor.system("bench"))
            if not verifier.revocations.wait_for_grant(grant_id, 30):
                raise RuntimeError(f"grant {grant_id}: no event within 30 s")
            try:
                verifier.verify(token)
            except TokenRevoked:
                latencies.append(time.perf_counter() - started)
            else:
                raise RuntimeError(f"grant {grant_id}: still honoured")
            if (n + 1) % 100 == 0:
                print(f"  {mode}: {n + 1}/{revocations}", flush=True)
    finally:
        agent_http.close()
        if poller:
            poller.stop()
        if receiver_server:
            receiver_server.shutdown()
            receiver_server.server_close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--revocations", type=int, default=1000)
    parser.add_argument("--mode", choices=["push", "poll", "both"], default="both")
    args = parser.parse_args()

    var_dir = tempfile.mkdtemp(prefix="custody-bench-revocation-")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    redis_server, redis_port = start_redis(var_dir)
    try:
        measure(args, var_dir, redis_port)
    finally:
        stop(redis_server)


def measure(args, var_dir: str, redis_port: int) -> None:
    env = environment(var_dir, redis_port)
    os.environ.update(env)
    reset_database(env)
    import django

    django.setup()
    from django.core.wsgi import get_wsgi_application
    from django.db import connections

    from bench.api_bench import SvidSigner, seed
    from bench.seeding import make_every_agent_eligible

    signer = SvidSigner()
    seeded = seed(signer)
    make_every_agent_eligible()
    django_app = get_wsgi_application()

    def custody_app(environ, start_response):
        # A thread per request: its database connection must not outlive it (CONN_MAX_AGE).
        try:
            return list(django_app(environ, start_response))
        finally:
            connections.close_all()

    server = make_server(
        "127.0.0.1", 0, custody_app, server_class=_ThreadingServer, handler_class=_Quiet
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    custody_url = f"http://127.0.0.1:{server.server_port}"
    worker = start_worker(env, Path(var_dir) / "worker.log")
    try:
        for mode in ["push", "poll"] if args.mode == "both" else [args.mode]:
            report(mode, run(mode, args.revocations, seeded, custody_url, signer))
    finally:
        stop(worker)
        server.shutdown()


def report(mode: str, values: list[float]) -> None:
    """One row per mode, printed as soon as that mode is done."""
    p50 = statistics.median(values) * 1000
    p99 = percentile(values, 0.99) * 1000
    worst = max(values) * 1000
    verdict = "met" if mode != "push" or p99 <= GOAL_P99_SECONDS * 1000 else "MISSED"
    print()
    print(f"Revoke → verifier refuses the token, {mode} (goal p99 ≤ 1000 ms with push)")
    print(f"{'mode':<6} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    print(
        f"{mode:<6} {len(values):>6} {p50:>9.1f} {p99:>9.1f} {worst:>9.1f}  {verdict}", flush=True
    )


if __name__ == "__main__":
    main()
