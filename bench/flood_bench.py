#!/usr/bin/env python
"""Flood control, measured: one noisy agent submits as fast as it can against the per-agent cap
of pending requests (CUSTODY_MAX_PENDING_PER_AGENT), while other agents keep working.

    .venv/bin/python bench/flood_bench.py [--seconds 20] [--cap 20] [--connections 4]
        [--quiet-agents 4] [--quiet-rate 2] [--sequential 200]
        [--database custody_bench_flood] [--redis-db 6]

What it does, in order:
1. Creates its database afresh, migrates it, empties two Redis DBs (--redis-db as the Celery
   broker, the next one as the cache) and seeds, through the services: a SPIFFE trust domain
   whose key this script holds, a sponsor and team, the noisy agent, --quiet-agents other
   agents, payments-api:refund (medium risk: people decide, so each accepted request stays
   pending and counts against the cap) and payments-db:read (low risk, 10 min: granted at once).
2. Starts gunicorn (2 sync workers, DEBUG off, PostgreSQL) as bench/api_bench.py does, with
   CUSTODY_MAX_PENDING_PER_AGENT=--cap.
3. Phase "without the flood": the other agents each submit an automatic payments-db:read at
   --quiet-rate per second for --seconds; every answer's status and latency is kept.
4. Phase "during the flood": the same, while `wrk` (--connections connections) has the noisy
   agent submit payments-api:refund requests back to back for --seconds (bench/wrk_flood.lua
   counts the answers by status and keeps the Retry-After). Worker CPU is read from /proc
   around both phases: the flood's share is what the workers used during it less the other
   agents' requests at the CPU each took without the flood, per noisy answer.
5. One 429 at a time: --sequential refused submits by the noisy agent with no other traffic,
   each timed on its own (the time per 429 without queueing).
6. Checks from the database: the noisy agent holds exactly --cap pending requests, how many
   `request.throttled` events were written (their own per-minute budget), and that the audit
   chain verifies (`manage.py verify_audit`).

Everything it starts (gunicorn, wrk) is stopped on exit, error or signal. All traffic stays on
127.0.0.1. The figures swing with whatever else runs on the machine: read the two phases side
by side, not against another run's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import api_bench as base  # noqa: E402 (gunicorn, SPIFFE signer, /proc accounting)

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_flood.lua"
TRUST_DOMAIN = "bench.custody.internal"
NOISY = f"spiffe://{TRUST_DOMAIN}/agents/noisy"
PEOPLE_PRIVILEGE = "payments-api:refund"  # medium risk: people decide, it stays pending
AUTO_PRIVILEGE = "payments-db:read"  # low risk, 10 min: granted at once
INTENT = {
    "action": "refund",
    "target": "invoice __TASK__",
    "justification": "The customer was charged twice.",
}


def body(privilege: str, task_id: str, duration: int) -> dict:
    return {
        "privilege": privilege,
        "task_id": task_id,
        "duration_seconds": duration,
        "intent": INTENT,
        "context": {"environment": "production"},
    }


def post(url: str, payload: dict, token: str) -> tuple[int, float, str]:
    """(status, milliseconds, Retry-After) of one POST; status 0 if the connection failed."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            response.read()
            status, retry_after = response.status, ""
    except urllib.error.HTTPError as error:
        error.read()
        status, retry_after = error.code, error.headers.get("Retry-After", "")
    except OSError:
        status, retry_after = 0, ""
    return status, (time.perf_counter() - started) * 1000, retry_after


class QuietAgent(threading.Thread):
    """Another agent going about its work: one automatic request every 1/rate seconds."""

    def __init__(self, url: str, token: str, rate: float, stop: threading.Event, name: str):
        super().__init__(daemon=True)
        self.url, self.token, self.rate, self.stop, self.label = url, token, rate, stop, name
        self.samples: list[tuple[int, float]] = []

    def run(self) -> None:
        interval, due, n = 1 / self.rate, time.monotonic(), 0
        while not self.stop.is_set():
            n += 1
            task = f"{self.label}-{secrets.token_hex(3)}-{n}"
            status, ms, _ = post(self.url, body(AUTO_PRIVILEGE, task, 600), self.token)
            self.samples.append((status, ms))
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                due = time.monotonic()


def quiet_phase(url: str, tokens: list[str], rate: float, seconds: float, during=None):
    """Run the quiet agents for `seconds` (while `during()` runs, if given); their samples."""
    stop = threading.Event()
    agents = [QuietAgent(url, t, rate, stop, f"quiet{i}") for i, t in enumerate(tokens)]
    for agent in agents:
        agent.start()
    result = during() if during else time.sleep(seconds)
    stop.set()
    for agent in agents:
        agent.join(35)
    return [sample for agent in agents for sample in agent.samples], result


def summary(samples: list[tuple[int, float]]) -> dict:
    times = sorted(ms for _, ms in samples)
    ok = sum(1 for status, _ in samples if status == 201)
    return {
        "sent": len(samples),
        "ok": ok,
        "other": len(samples) - ok,
        "p50": statistics.median(times) if times else 0.0,
        "p95": times[max(int(round(len(times) * 0.95)) - 1, 0)] if times else 0.0,
        "max": times[-1] if times else 0.0,
    }


def workers_cpu(server) -> float:
    """CPU seconds the gunicorn workers have used so far."""
    return sum((base.proc_stat(pid) or (0, 0.0))[1] for pid in server.workers())


def flood(server, token: str, seconds: int, connections: int) -> dict:
    """wrk as the noisy agent; its result."""
    env = {
        **os.environ,
        "BENCH_TOKEN": token,
        "BENCH_BODY": json.dumps(body(PEOPLE_PRIVILEGE, "__TASK__", 900)),
        "BENCH_NONCE": secrets.token_hex(6),
    }
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(LUA_SCRIPT), f"{server.base_url}/api/v1/requests",
    ]  # fmt: skip

    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    base._children.append(process)
    output, result = [], None
    for raw in process.stdout:
        line = raw.decode(errors="replace")
        output.append(line)
        if line.startswith("FLOOD_RESULT "):
            result = json.loads(line.removeprefix("FLOOD_RESULT "))
    process.wait()
    base._children.remove(process)
    if process.returncode != 0 or result is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{''.join(output)}")
    return result


def reset(database: str, redis_db: int) -> None:
    import psycopg
    import redis

    with psycopg.connect(base.PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {database}")
    for db in (redis_db, redis_db + 1):
        redis.Redis.from_url(f"redis://127.0.0.1:6379/{db}").flushdb()


def seed(signer, quiet_agents: int) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from agents.models import SponsorProfile, TrustDomain
    from agents.services import agent_register, trust_domain_save
    from approvals.models import Privilege
    from approvals.services import privilege_save
    from approvals.tokens import signing_key_create
    from audit.services import Actor

    actor = Actor.system("bench")
    trust_domain_save(
        domain=TrustDomain(name=TRUST_DOMAIN, kind=TrustDomain.Kind.SPIFFE, jwks=signer.jwks),
        actor=actor,
        created=True,
    )
    team = Group.objects.create(name="payments-platform")
    sponsor = get_user_model().objects.create_user("bench-sponsor", "sponsor@example.com")
    sponsor.groups.add(team)
    SponsorProfile.objects.create(user=sponsor)
    for spiffe_id in [NOISY] + [quiet_id(n) for n in range(quiet_agents)]:
        agent_register(
            spiffe_id=spiffe_id, name=spiffe_id.rsplit("/", 1)[1], sponsor=sponsor, team=team,
            actor=actor,
        )  # fmt: skip
    for name, risk in ((PEOPLE_PRIVILEGE, "medium"), (AUTO_PRIVILEGE, "low")):
        resource, action = name.split(":")
        privilege_save(
            privilege=Privilege(resource=resource, action=action, risk=risk),
            actor=actor,
            created=True,
        )
    signing_key_create()  # made here so the two workers never race to create it


def quiet_id(n: int) -> str:
    return f"spiffe://{TRUST_DOMAIN}/agents/quiet-{n}"


def database_checks(database: str) -> dict:
    import psycopg

    dsn = f"postgresql://postgres@127.0.0.1:5432/{database}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        pending = conn.execute(
            "SELECT count(*) FROM approvals_accessrequest r JOIN agents_agent a "
            "ON a.id = r.agent_id WHERE a.spiffe_id = %s AND r.status = 'pending'",
            [NOISY],
        ).fetchone()[0]
        throttled = conn.execute(
            "SELECT count(*) FROM audit_auditevent WHERE verb = 'request.throttled'"
        ).fetchone()[0]
    return {"pending": pending, "throttled": throttled}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="length of each phase")
    parser.add_argument("--cap", type=int, default=20, help="CUSTODY_MAX_PENDING_PER_AGENT")
    parser.add_argument("--connections", type=int, default=4, help="the noisy agent's wrk -c")
    parser.add_argument("--quiet-agents", type=int, default=4)
    parser.add_argument("--quiet-rate", type=float, default=2.0, help="per agent, per second")
    parser.add_argument("--sequential", type=int, default=200, help="429s timed one at a time")
    parser.add_argument("--database", default="custody_bench_flood")
    parser.add_argument("--redis-db", type=int, default=6, help="broker; the next is the cache")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get update && apt-get install -y wrk")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, base._raise_on_signal)
    work_dir = Path(tempfile.mkdtemp(prefix="custody-flood-"))
    env = base.bench_env(str(work_dir))
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{args.database}",
        CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{args.redis_db}",
        CACHE_URL=f"redis://127.0.0.1:6379/{args.redis_db + 1}",
        CUSTODY_MAX_PENDING_PER_AGENT=str(args.cap),
    )
    server = None
    try:
        print(f"resetting {args.database}, Redis DBs {args.redis_db}-{args.redis_db + 1} ...")
        reset(args.database, args.redis_db)
        base.migrate(env)
        os.environ.update(env)

        import django

        django.setup()
        from django.conf import settings
        from django.db import connection

        signer = base.SvidSigner()
        seed(signer, args.quiet_agents)
        from bench.seeding import make_every_agent_eligible

        make_every_agent_eligible()
        connection.close()
        noisy_token = signer.mint(NOISY)
        quiet_tokens = [signer.mint(quiet_id(n)) for n in range(args.quiet_agents)]
        server = base.Gunicorn(
            env=env, port=base.free_port(), worker_class="sync", threads=1,
            log_path=work_dir / "gunicorn.log",
        )  # fmt: skip
        server.start()
        url = f"{server.base_url}/api/v1/requests"
        print(f"gunicorn up on {server.base_url} (2 sync workers); {args.seconds} s per phase")

        cpu_start = workers_cpu(server)
        baseline, _ = quiet_phase(url, quiet_tokens, args.quiet_rate, args.seconds)
        cpu_baseline = workers_cpu(server) - cpu_start
        cpu_start = workers_cpu(server)
        during, wrk = quiet_phase(
            url,
            quiet_tokens,
            args.quiet_rate,
            args.seconds,
            during=lambda: flood(server, noisy_token, args.seconds, args.connections),
        )
        cpu_during = workers_cpu(server) - cpu_start
        # The workers served the other agents too: their share is taken at the baseline's
        # CPU per request, the rest is the noisy agent's.
        per_quiet = cpu_baseline / max(len(baseline), 1)
        worker_cpu = {
            "per_quiet_ms": per_quiet * 1000,
            "noisy_s": max(cpu_during - per_quiet * len(during), 0.0),
            "during_s": cpu_during,
        }
        sequential = [
            post(url, body(PEOPLE_PRIVILEGE, f"one-at-a-time-{n}", 900), noisy_token)
            for n in range(args.sequential)
        ]
        checks = database_checks(args.database)
        verified = subprocess.run(
            [base.PYTHON, "manage.py", "verify_audit"],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        report(
            args,
            wrk=wrk,
            worker_cpu=worker_cpu,
            baseline=summary(baseline),
            during=summary(during),
            sequential=sequential,
            checks=checks,
            audit_budget=settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE,
            verified=(verified.stdout + verified.stderr).strip().splitlines()[-1:],
            verified_ok=verified.returncode == 0,
        )
        return 0
    finally:
        if server is not None:
            server.stop()
        base._stop_children()
        with contextlib.suppress(Exception):
            shutil.rmtree(work_dir)


def report(args, *, wrk, worker_cpu, baseline, during, sequential, checks, audit_budget,
           verified, verified_ok) -> None:  # fmt: skip
    statuses = {int(code): n for code, n in wrk["statuses"].items()}
    seconds = wrk["duration_us"] / 1e6
    accepted, refused = statuses.get(201, 0), statuses.get(429, 0)
    other = {code: n for code, n in statuses.items() if code not in (201, 429)}
    one_ms = sorted(ms for status, ms, _ in sequential if status == 429)
    not_429 = [status for status, _, _ in sequential if status != 429]
    retry_after = wrk["retry_after"] or next((r for s, _, r in sequential if r), "")
    print(
        f"\nFlood control: CUSTODY_MAX_PENDING_PER_AGENT={args.cap}, gunicorn 2 sync workers, "
        f"PostgreSQL, {args.seconds} s per phase; machine load average now "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"\nthe noisy agent (wrk -t1 -c{args.connections}, {PEOPLE_PRIVILEGE}: people decide)")
    print(f"  sent                      {wrk['requests']} in {seconds:.1f} s "
          f"({wrk['requests'] / seconds:.0f}/s)")  # fmt: skip
    print(f"  accepted (201)            {accepted}")
    print(f"  refused (429)             {refused}")
    print(f"  other statuses            {other or 'none'}; transport errors {wrk['errors']}")
    print(f"  pending afterwards        {checks['pending']} "
          f"({'exactly the cap' if checks['pending'] == args.cap else 'NOT the cap'})")  # fmt: skip
    print(f"  Retry-After on a 429      {retry_after} s (until its earliest pending deadline)")
    print(
        f"  latency under the flood   p50 {wrk['p50_us'] / 1000:.1f} ms, p90 "
        f"{wrk['p90_us'] / 1000:.1f} ms, p99 {wrk['p99_us'] / 1000:.1f} ms, max "
        f"{wrk['max_us'] / 1000:.1f} ms (all answers; all but {accepted} are 429s)"
    )
    answers = max(wrk["requests"], 1)
    print(
        f"  worker CPU per answer     {worker_cpu['noisy_s'] * 1000 / answers:.1f} ms "
        f"(workers used {worker_cpu['during_s']:.1f} CPU s during the flood, less the other "
        f"agents' {during['sent']} requests at {worker_cpu['per_quiet_ms']:.1f} ms each, the "
        "CPU per automatic request measured without the flood)"
    )
    odd = f"; {len(not_429)} were not 429: {set(not_429)}" if not_429 else ""
    if one_ms:
        print(
            f"  one 429 at a time         median {statistics.median(one_ms):.1f} ms, p95 "
            f"{one_ms[max(int(round(len(one_ms) * 0.95)) - 1, 0)]:.1f} ms over {len(one_ms)}"
            f" (no other traffic){odd}"
        )
    print(f"  request.throttled events  {checks['throttled']} "
          f"(budget {audit_budget} per minute)")  # fmt: skip
    print(
        f"\nthe other agents ({args.quiet_agents} agents x {args.quiet_rate:g}/s, "
        f"{AUTO_PRIVILEGE}: granted at once)"
    )
    print(f"  {'':20} {'sent':>6} {'201':>6} {'other':>6} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'max ms':>8}")  # fmt: skip
    for label, figures in (("without the flood", baseline), ("during the flood", during)):
        print(
            f"  {label:20} {figures['sent']:6d} {figures['ok']:6d} {figures['other']:6d} "
            f"{figures['p50']:8.1f} {figures['p95']:8.1f} {figures['max']:8.1f}"
        )
    print(f"\naudit chain: {'verifies' if verified_ok else 'DOES NOT VERIFY'} "
          f"({' '.join(verified)})")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
