#!/usr/bin/env python
"""Custody API benchmark: one command, one run, figures side by side.

    .venv/bin/python bench/api_bench.py [--duration 28] [--rounds 4] [--warmup 5]
        [--concurrency 4] [--worker-class sync|gthread [--threads 2]] [--profile]
        [--database custody_bench] [--dot-database custody_bench_dot]
        [--broker-db 6] [--cache-db 7]

What it does, in order:
1. Creates the database `custody_bench` (`--database`) afresh, migrates it, empties Redis DBs 6
   (broker, `--broker-db`) and 7 (cache, `--cache-db`), and seeds it in this process (with
   bench.settings): a SPIFFE trust domain whose ES256 key this script holds, a sponsor and team,
   the requesting agent and a resource-server agent (agents.services.agent_register), the
   privilege payments-db:read (low risk), Custody's signing key and the bench-only floor table.
2. (p) In-process: raw `cedarpy.is_authorized` on a pre-parsed PolicySet and Entities handle,
   raw `is_authorized_batch` of the two questions Custody asks, and `approvals.policy.decide`,
   µs per call, median of several rounds.
3. Starts gunicorn (2 workers) on 127.0.0.1 and a free port with DEBUG=false against
   PostgreSQL, and drives with `wrk` (one thread, fixed connections, a Lua script for the POST
   body and bearer header), each endpoint warmed up and then measured for a fixed duration:
   (a) POST /api/v1/requests, auto-approved (auth + Cedar + writes + audit + signing);
   (b) POST /api/v1/introspect of a live token, by the resource-server workload;
   (c) POST /bench/floor: the same authentication plus exactly one INSERT (bench URLconf only);
   (d) the peer a Django team would pick: django-oauth-toolkit's RFC 7662 endpoint
   (POST /o/introspect/, bench/dot_peer) on its own PostgreSQL database (`--dot-database`),
   its own gunicorn with the same worker class and count, the resource server authenticated
   as DOT expects (a bearer token with the `introspection` scope), a live token introspected.
   The measured time is split into interleaved rounds (a b c d, b c d a, c d a b, d a b c) so
   that whatever else runs on the machine weighs on all alike; latencies of rounds are merged.
   Each server counts its SQL statements per request (bench/sql_count.py, X-Bench-SQL).
   CPU of wrk, of each worker, of the gunicorn master and of PostgreSQL (/proc/<pid>/stat) and
   of the whole machine (/proc/stat) is measured over each run, and pg_stat_activity is
   sampled for what the backends wait on.
4. Prints the table with the targets (a/c ≤ 2.5, b/c ≤ 1.5, b/d ≤ 1 in p50 latency; decide
   ≤ 1.5× raw Cedar), SQL statements and worker CPU per request for each, peak RSS (VmHWM)
   per worker, and checks that the rows written match wrk's count and that the audit chain
   still verifies.

Workers are gunicorn's sync workers by default: one request per process at a time, as the
issue's "2 workers" reads, so per-request cost is not blurred by threads sharing a GIL on a
2-core box. (The price: no keep-alive, so wrk reconnects per request, the same for a, b, c.)
`--worker-class gthread --threads N` is there to compare.

Everything it starts (gunicorn, wrk) is stopped on exit, error or signal. All traffic stays on
127.0.0.1. `--profile` adds an in-process cProfile of each request kind (after the HTTP runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"
DB_NAME = "custody_bench"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BENCH_DSN = f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
BROKER_URL = "redis://127.0.0.1:6379/6"
CACHE_URL = "redis://127.0.0.1:6379/7"
TRUST_DOMAIN = "bench.custody.internal"
AGENT_SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}/agents/invoice-bot"
SERVER_SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}/resource-servers/payments-db"
PRIVILEGE = "payments-db:read"
A_PATH, B_PATH, C_PATH = "/api/v1/requests", "/api/v1/introspect", "/bench/floor"
D_PATH = "/o/introspect/"  # django-oauth-toolkit's RFC 7662 endpoint (bench/dot_peer)
DOT_DB_NAME = "custody_bench_dot"
DURATION_SECONDS = 600  # ≤ 900, so the default policy approves it automatically
SVID_TTL_SECONDS = 3600
INTENT = {
    "action": "reconcile invoices",
    "target": "invoices 2026-11",
    "justification": "3 invoices do not match the ledger.",
}
TARGET_A_OVER_C = 2.5
TARGET_B_OVER_C = 1.5
TARGET_B_OVER_D = 1.0  # the goal: Custody's introspection at or below the peer's p50
TARGET_POLICY_OVER_CEDAR = 1.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_children: list[subprocess.Popen] = []


# --- processes ----------------------------------------------------------------------------------


def _stop(process: subprocess.Popen, *, group: bool, grace: float = 10.0) -> None:
    """SIGTERM the process (or its own process group), then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            kill(process.pid, signal.SIGKILL)
        process.wait(5)


def _stop_children() -> None:
    while _children:
        _stop(_children.pop(), group=True)


def _raise_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bench_env(var_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1",
        DATABASE_URL=DATABASE_URL,
        CELERY_BROKER_URL=BROKER_URL,
        CACHE_URL=CACHE_URL,
        CUSTODY_VAR_DIR=var_dir,
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
        # One agent submits thousands of requests to measure the automatic path; the
        # cumulative limit would send all but the first few to people.
        CUSTODY_CUMULATIVE_FACTOR="0",
        # The benchmark's agents leave many requests waiting for people: no flood control.
        CUSTODY_MAX_PENDING_PER_AGENT="1000000",
    )
    return env


# --- /proc accounting ---------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return None


def proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, CPU seconds user+system) of a live process, from /proc/<pid>/stat."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children_of(ppid: int) -> list[int]:
    return sorted(pid for pid in all_pids() if (stat := proc_stat(pid)) and stat[0] == ppid)


def postgres_cpu(database: str) -> tuple[dict[int, float], dict[int, float]]:
    """CPU seconds of every postgres process, and of the backends connected to `database`."""
    every, bench = {}, {}
    for pid in all_pids():
        if (_read(f"/proc/{pid}/comm") or "").strip() != "postgres":
            continue
        stat = proc_stat(pid)
        if stat is None:
            continue
        every[pid] = stat[1]
        if f" {database} " in (_read(f"/proc/{pid}/cmdline") or ""):
            bench[pid] = stat[1]
    return every, bench


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    values = [int(v) for v in (_read("/proc/stat") or "").splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def vm_hwm_kib(pid: int) -> int | None:
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


@dataclass
class Snapshot:
    at: float
    machine: tuple[int, int]
    workers: dict[int, float]
    master: float
    pg_all: dict[int, float]
    pg_bench: dict[int, float]
    me: float

    @classmethod
    def take(cls, server: Gunicorn) -> Snapshot:
        pg_all, pg_bench = postgres_cpu(server.database)
        times = os.times()
        return cls(
            at=time.monotonic(),
            machine=machine_jiffies(),
            workers={pid: (proc_stat(pid) or (0, 0.0))[1] for pid in server.workers()},
            master=(proc_stat(server.pid) or (0, 0.0))[1],
            pg_all=pg_all,
            pg_bench=pg_bench,
            me=times.user + times.system,
        )


def _delta(after: dict[int, float], before: dict[int, float]) -> float:
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


# --- gunicorn -----------------------------------------------------------------------------------


class Gunicorn:
    def __init__(
        self,
        *,
        env: dict,
        port: int,
        worker_class: str,
        threads: int,
        log_path: Path,
        app: str = "config.wsgi:application",
        database: str | None = None,
        ready_path: str = "/.well-known/jwks.json",
    ):
        self.env, self.port, self.app = env, port, app
        self.database = database or DB_NAME
        self.ready_path = ready_path
        self.worker_class, self.threads = worker_class, threads
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            str(Path(PYTHON).parent / "gunicorn"),
            self.app,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            "2",
            "--worker-class",
            self.worker_class,
            "--timeout",
            "60",
            "--graceful-timeout",
            "5",
            "--log-level",
            "warning",
            "--worker-tmp-dir",
            "/dev/shm",
            "--no-control-socket",  # one shared socket path would collide between servers
        ]
        if self.worker_class == "gthread":
            command += ["--threads", str(self.threads)]
        with open(self.log_path, "wb") as log:  # gunicorn keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _children.append(self.process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early; see {self.log_path}")
            try:
                urllib.request.urlopen(f"{self.base_url}{self.ready_path}", timeout=2).close()
                answered = True
            except urllib.error.HTTPError:  # any HTTP answer means it serves
                answered = True
            except OSError:
                answered = False
            if answered and len(self.workers()) == 2:
                return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer within 60 s; see {self.log_path}")

    def workers(self) -> list[int]:
        return children_of(self.pid) if self.process else []

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process, group=True)
            with contextlib.suppress(ValueError):
                _children.remove(self.process)


# --- HTTP ---------------------------------------------------------------------------------------


def post_json(url: str, body: dict, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def request_body(task_id: str) -> dict:
    return {
        "privilege": PRIVILEGE,
        "task_id": task_id,
        "duration_seconds": DURATION_SECONDS,
        "intent": INTENT,
        "context": {"environment": "production"},
    }


# --- workload identity --------------------------------------------------------------------------


class SvidSigner:
    """The bench's own SPIFFE trust domain key (ES256), and a JWT-SVID minter."""

    def __init__(self):
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec

        from agents.jwks import jwk_thumbprint

        self._jwt = jwt
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": jwk_thumbprint(jwk), "alg": "ES256", "use": "sig"}

    @property
    def jwks(self) -> dict:
        return {"keys": [self.jwk]}

    def mint(self, spiffe_id: str, *, ttl: int = SVID_TTL_SECONDS) -> str:
        now = int(time.time())
        claims = {
            "sub": spiffe_id,
            "aud": ["custody"],
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_hex(16),
        }
        return self._jwt.encode(
            claims,
            self.private_key,
            algorithm="ES256",
            headers={"kid": self.jwk["kid"], "typ": "JWT"},
        )


# --- setup --------------------------------------------------------------------------------------


def reset_stores() -> None:
    import psycopg
    import redis

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    for url in (BROKER_URL, CACHE_URL):
        redis.Redis.from_url(url).flushdb()


def flush_redis() -> None:
    import redis

    for url in (BROKER_URL, CACHE_URL):
        with contextlib.suppress(Exception):
            redis.Redis.from_url(url).flushdb()


def migrate(env: dict) -> float:
    started = time.monotonic()
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    return time.monotonic() - started


def dot_peer_setup(base_env: dict) -> tuple[dict, dict[str, str]]:
    """The peer's database afresh, migrated and seeded (bench/dot_peer/seed.py): its server
    environment, and its tokens (`server`: the resource server's bearer with the
    `introspection` scope; `token`: the live token it introspects)."""
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DOT_DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DOT_DB_NAME}")
    env = {
        **base_env,
        "DJANGO_SETTINGS_MODULE": "bench.dot_peer.settings",
        "DOT_PEER_DATABASE": DOT_DB_NAME,
    }
    subprocess.run(
        [PYTHON, "-m", "django", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    seeded = subprocess.run(
        [PYTHON, "-m", "bench.dot_peer.seed"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return env, json.loads(seeded.stdout.strip().splitlines()[-1])


def sql_per_request(url: str, body, token: str, content_type: str, *, times: int = 7) -> int:
    """Statements the server ran per request (bench/sql_count.py's X-Bench-SQL header), the
    median of `times` requests: occasional work (the once-a-minute last-seen write, a signing
    key read again after its 30 s cache) does not count as the request's own. `body` may be a
    function returning the body, for requests that must differ (a task id)."""
    counts = []
    for _ in range(times):
        request = urllib.request.Request(
            url,
            data=body() if callable(body) else body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                counts.append(int(response.headers["X-Bench-SQL"]))
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{url}: {error.code} {error.read()[:300]!r}")
    return int(statistics.median(counts))


@dataclass
class Seeded:
    agent: object
    server: object
    privilege: object


def seed(signer: SvidSigner) -> Seeded:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection

    from agents.models import Agent, SponsorProfile, TrustDomain
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
    sponsor = get_user_model().objects.create_user(
        username="bench-sponsor", email="bench-sponsor@example.com"
    )
    sponsor.groups.add(team)
    SponsorProfile.objects.create(user=sponsor)
    agent = agent_register(
        spiffe_id=AGENT_SPIFFE_ID, name="Invoice bot", sponsor=sponsor, team=team, actor=actor
    )
    server = agent_register(
        spiffe_id=SERVER_SPIFFE_ID,
        name="payments-db gateway",
        sponsor=sponsor,
        team=team,
        actor=actor,
        kind=Agent.Kind.RESOURCE_SERVER,  # only a registered resource server may introspect
        introspection_audiences=[PRIVILEGE.split(":")[0]],
    )
    resource, action = PRIVILEGE.split(":")
    privilege = privilege_save(
        privilege=Privilege(
            resource=resource, action=action, risk="low", max_duration_seconds=3600
        ),
        actor=actor,
        created=True,
    )
    signing_key_create()  # made here so the two workers never race to create it
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE bench_floor (id bigserial PRIMARY KEY, agent_id bigint NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now())"
        )
    return Seeded(agent=agent, server=server, privilege=privilege)


# --- (d) policy decision vs raw Cedar -----------------------------------------------------------


RAW_SINGLE = "raw cedarpy.is_authorized (auto_approve; pre-parsed PolicySet + Entities)"
RAW_BATCH = "raw cedarpy.is_authorized_batch (request + auto_approve, as Custody asks)"
ENTITIES = "Entities.from_json_str(_entities_json(facts)), which decide() does per call"
DECIDE = "approvals.policy.decide(compiled, facts)"


@dataclass
class PolicyFigures:
    micros: dict[str, float]
    rounds: int
    calls: int


def measure_policy(seeded: Seeded, *, rounds: int = 7, calls: int = 1000) -> PolicyFigures:
    import cedarpy

    from approvals import policy
    from approvals.services.facts import policy_facts

    compiled = policy.compile_policies([("default", policy.DEFAULT_POLICY_TEXT)], generation=0)
    # The facts exactly as access_request_submit builds them for this agent and privilege.
    facts = policy_facts(
        agent=seeded.agent,
        privilege=seeded.privilege,
        intent=INTENT,
        duration_seconds=DURATION_SECONDS,
        context={"environment": "production"},
        task_id="bench-policy",
        initiated_by="",
    )
    principal = {"type": "Agent", "id": facts.agent_id}
    resource = {"type": "Privilege", "id": facts.privilege_name}
    context = policy._context(facts)
    entities_json = policy._entities_json(facts)
    entities = cedarpy.Entities.from_json_str(entities_json)
    ask = {"principal": principal, "action": policy.REQUEST, "resource": resource}
    ask["context"] = context
    auto = {**ask, "action": policy.AUTO_APPROVE}
    policy_set = compiled.policy_set

    outcome = policy.decide(compiled, facts)
    single = cedarpy.is_authorized(auto, policy_set, entities)
    both = cedarpy.is_authorized_batch([ask, auto], policy_set, entities)
    if outcome.outcome != "auto_approve" or not single.allowed or not all(r.allowed for r in both):
        raise RuntimeError(f"(d) does not decide auto_approve: {outcome}, {single}, {both}")

    variants = {
        RAW_SINGLE: lambda: cedarpy.is_authorized(auto, policy_set, entities),
        RAW_BATCH: lambda: cedarpy.is_authorized_batch([ask, auto], policy_set, entities),
        ENTITIES: lambda: cedarpy.Entities.from_json_str(policy._entities_json(facts)),
        DECIDE: lambda: policy.decide(compiled, facts),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for function in variants.values():
        for _ in range(100):
            function()
    for _ in range(rounds):
        for name, function in variants.items():
            started = time.perf_counter_ns()
            for _ in range(calls):
                function()
            samples[name].append((time.perf_counter_ns() - started) / calls / 1000)
    return PolicyFigures({n: statistics.median(v) for n, v in samples.items()}, rounds, calls)


# --- load runs ----------------------------------------------------------------------------------


class WaitSampler(threading.Thread):
    """Samples pg_stat_activity (10 Hz) for what the server's database's backends wait on."""

    def __init__(self, database: str):
        super().__init__(daemon=True)
        self.database = database
        self.stop_event = threading.Event()
        self.samples: Counter = Counter()

    def run(self):
        import psycopg

        with psycopg.connect(PG_BENCH_DSN, autocommit=True) as conn:
            while not self.stop_event.wait(0.1):
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type, 'CPU'), coalesce(wait_event, 'running') "
                    "FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
                    "AND pid <> pg_backend_pid()",
                    [self.database],
                ).fetchall()
                self.samples.update(f"{kind}:{event}" for kind, event in rows)


@dataclass
class Run:
    """One wrk run against one endpoint, with the CPU every party used meanwhile."""

    wrk: dict
    quantiles: list[int]
    wall: float
    wrk_cpu: float
    workers_cpu: float
    master_cpu: float
    pg_bench_cpu: float
    pg_all_cpu: float
    other_cpu: float
    machine_busy: float  # share of all CPUs, 0..1
    waits: Counter
    rows_written: int | None


@dataclass
class Endpoint:
    key: str
    label: str
    path: str
    who: str
    runs: list[Run] = field(default_factory=list)

    def total(self, name: str) -> float:
        return sum(getattr(run, name) for run in self.runs)

    @property
    def requests(self) -> int:
        return sum(run.wrk["requests"] for run in self.runs)

    @property
    def rps(self) -> float:
        return self.requests / (sum(run.wrk["duration_us"] for run in self.runs) / 1e6)

    def percentile(self, p: float) -> float:
        """ms; the runs' quantile grids merged, each point weighted by its run's requests."""
        points = sorted(
            (value, run.wrk["requests"] / len(run.quantiles))
            for run in self.runs
            for value in run.quantiles
        )
        rank, seen = p / 100 * sum(weight for _, weight in points), 0.0
        for value, weight in points:
            seen += weight
            if seen >= rank:
                return value / 1000
        return points[-1][0] / 1000

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.total("workers_cpu") / max(self.requests, 1)

    @property
    def max_ms(self) -> float:
        return max(run.wrk["max_us"] for run in self.runs) / 1000

    @property
    def errors(self) -> int:
        keys = ("connect", "read", "write", "status", "timeout")
        return sum(run.wrk[k] for run in self.runs for k in keys)

    @property
    def waits(self) -> Counter:
        return sum((run.waits for run in self.runs), Counter())


def run_wrk(
    server: Gunicorn,
    *,
    path: str,
    token: str,
    body: str,
    seconds: int,
    connections: int,
    work_dir: Path,
    count_rows_sql: str | None = None,
    content_type: str = "application/json",
) -> Run:
    import psycopg

    def count_rows() -> int | None:
        if count_rows_sql is None:
            return None
        with psycopg.connect(PG_BENCH_DSN, autocommit=True) as conn:
            return conn.execute(count_rows_sql).fetchone()[0]

    quantiles_path = work_dir / f"quantiles-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "BENCH_TOKEN": token,
        "BENCH_BODY": body,
        "BENCH_NONCE": secrets.token_hex(6),
        "BENCH_QUANTILES": str(quantiles_path),
        "BENCH_CONTENT_TYPE": content_type,
    }
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(LUA_SCRIPT), f"{server.base_url}{path}",
    ]  # fmt: skip
    rows_before = count_rows()
    sampler = WaitSampler(server.database)
    sampler.start()
    before = Snapshot.take(server)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    _children.append(process)
    output, result, after, wrk_cpu = [], None, None, 0.0
    for raw in process.stdout:
        line = raw.decode(errors="replace")
        output.append(line)
        if line.startswith("BENCH_RESULT ") and result is None:
            # Clocks stop here: wrk's done() computes its quantile grid after this line.
            wrk_cpu = (proc_stat(process.pid) or (0, 0.0))[1]
            after = Snapshot.take(server)
            result = json.loads(line.removeprefix("BENCH_RESULT "))
    process.wait()
    _children.remove(process)
    sampler.stop_event.set()
    sampler.join()
    rows_after = count_rows()
    if process.returncode != 0 or result is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{''.join(output)}")
    wall = after.at - before.at
    busy = after.machine[0] - before.machine[0]
    total = after.machine[1] - before.machine[1]
    workers = _delta(after.workers, before.workers)
    master = after.master - before.master
    pg_all = _delta(after.pg_all, before.pg_all)
    me = after.me - before.me
    return Run(
        wrk=result,
        quantiles=[int(v) for v in quantiles_path.read_text().split()],
        wall=wall,
        wrk_cpu=wrk_cpu,
        workers_cpu=workers,
        master_cpu=master,
        pg_bench_cpu=_delta(after.pg_bench, before.pg_bench),
        pg_all_cpu=pg_all,
        other_cpu=max(busy / CLOCK_TICKS - wrk_cpu - workers - master - pg_all - me, 0.0),
        machine_busy=busy / total if total else 0.0,
        waits=sampler.samples,
        rows_written=None if rows_before is None else rows_after - rows_before,
    )


# --- in-process: queries per request, and an optional profile -----------------------------------


def in_process_checks(
    tokens: dict[str, str], access_token: str, *, profile: bool, profile_requests: int
) -> dict[str, int]:
    """Query count of one request of each kind through Django's test client (same settings,
    same database); with `profile`, cProfile of `profile_requests` of each kind."""
    import cProfile
    import pstats

    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(SERVER_NAME="127.0.0.1")
    counter = iter(range(10**9))
    kinds = {
        "a": lambda: client.post(
            "/api/v1/requests",
            request_body(f"inproc-{next(counter)}"),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {tokens['agent']}",
        ),
        "b": lambda: client.post(
            "/api/v1/introspect",
            {"token": access_token},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {tokens['server']}",
        ),
        "c": lambda: client.post(
            "/bench/floor",
            {"n": 1},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {tokens['agent']}",
        ),
    }
    queries: dict[str, int] = {}
    for kind, call in kinds.items():
        for _ in range(20):
            response = call()
            if response.status_code not in (200, 201):
                raise RuntimeError(f"in-process {kind}: {response.status_code} {response.content}")
        with CaptureQueriesContext(connection) as captured:
            call()
        queries[kind] = len(captured.captured_queries)
        if profile:
            print(f"\n--- in-process SQL of one ({kind}) request ---")
            for number, query in enumerate(captured.captured_queries, 1):
                print(f"  {number:2d}. {query['sql'][:150]}")
            print_statement_times(call, profile_requests)
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            for _ in range(profile_requests):
                call()
            profiler.disable()
            per_request = (time.perf_counter() - started) / profile_requests * 1000
            print(
                f"\n--- cProfile of {profile_requests} ({kind}) requests in-process, "
                f"{per_request:.2f} ms each under the profiler ---"
            )
            dump = Path(tempfile.gettempdir()) / f"custody-api-bench-{kind}.pstats"
            profiler.dump_stats(dump)
            print(f"(the whole profile: python -m pstats {dump})")
            stats = pstats.Stats(profiler).strip_dirs()
            stats.sort_stats("tottime").print_stats(18)
            stats.sort_stats("cumulative").print_stats(30)
    return queries


def print_statement_times(call, requests: int) -> None:
    """Wall time of each statement of a request (median over `requests`), beside the request's
    own: how much of it is PostgreSQL's round trips and how much is Python."""
    from django.db import connection

    per_statement: dict[int, list[float]] = {}
    labels: dict[int, str] = {}
    whole: list[float] = []
    index = 0

    def timed(execute, sql, params, many, context):
        nonlocal index
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            per_statement.setdefault(index, []).append(time.perf_counter() - started)
            labels.setdefault(index, " ".join(sql.split())[:70])
            index += 1

    with connection.execute_wrapper(timed):
        for _ in range(requests):
            index = 0
            started = time.perf_counter()
            call()
            whole.append(time.perf_counter() - started)
    request_ms = statistics.median(whole) * 1000
    in_sql = sum(statistics.median(times) for times in per_statement.values()) * 1000
    print(f"\n--- wall time per statement, median of {requests} requests ---")
    for number, times in sorted(per_statement.items()):
        print(f"  {number + 1:2d}. {statistics.median(times) * 1000:6.2f} ms  {labels[number]}")
    print(
        f"  request {request_ms:.2f} ms: {in_sql:.2f} ms in statements, "
        f"{request_ms - in_sql:.2f} ms in Python"
    )


def verify_audit() -> str:
    from audit.services import verify_chain

    report = verify_chain()
    return f"{report.verified} events, " + (
        "chain verifies" if report.ok else f"BROKEN at #{report.first_bad_sequence}"
    )


# --- report -------------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "NOT met"


def print_report(
    *,
    args,
    endpoints: dict[str, Endpoint],
    figures: PolicyFigures,
    rss: dict[int, int],
    versions: dict[str, str],
    queries: dict[str, int],
    audit: str,
    migrate_seconds: float,
) -> None:
    a, b, c, d = endpoints["a"], endpoints["b"], endpoints["c"], endpoints["d"]
    width = 112
    rule = "=" * width
    threads = f" x {args.threads} threads" if args.worker_class == "gthread" else ""
    print(f"\n{rule}")
    print(
        f"Custody API benchmark: gunicorn {versions['gunicorn']}, 2 {args.worker_class} workers"
        f"{threads} each for Custody and the peer, PostgreSQL {versions['postgres']} "
        f"({DB_NAME}; peer {DOT_DB_NAME}), DEBUG=false, {os.cpu_count()} CPUs"
    )
    seconds = max(1, args.duration // args.rounds)
    print(
        f"load: {versions['wrk']} -t1 -c{args.concurrency}; per endpoint {args.warmup} s warm-up, "
        f"then {args.rounds} rounds x {seconds} s, rounds interleaved (a b c d / b c d a / ...)"
    )
    print(
        f"(d) the peer: django-oauth-toolkit {versions['dot']} (bench/dot_peer), bearer token "
        "with the introspection scope"
    )
    print(f"127.0.0.1 only; fresh database, migrate took {migrate_seconds:.1f} s")
    print(rule)
    print(
        f"{'endpoint':<48}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'requests':>9}"
        f"{'errors':>7}{'SQL':>5}{'CPU ms':>8}"
    )
    for endpoint in (a, b, c, d):
        print(
            f"{endpoint.label:<48}{endpoint.rps:>8.1f}{endpoint.p50:>8.2f}{endpoint.p99:>8.2f}"
            f"{endpoint.max_ms:>8.1f}{endpoint.requests:>9d}{endpoint.errors:>7d}"
            f"{queries.get(endpoint.key, 0):>5d}{endpoint.cpu_ms_per_request:>8.2f}"
        )
    print(
        "  (latencies over all rounds merged; SQL = statements per request, counted by the server"
        " (X-Bench-SQL);\n   CPU ms = the 2 workers' CPU per request)"
    )
    print()
    print(f"{'ratio':<34}{'measured':>10}{'target':>9}  {'verdict':<9}per round")
    rows = [
        ("a/c latency p50", a, c, "p50_us", TARGET_A_OVER_C),
        ("a/c latency p99", a, c, "p99_us", TARGET_A_OVER_C),
        ("b/c latency p50", b, c, "p50_us", TARGET_B_OVER_C),
        ("b/c latency p99", b, c, "p99_us", TARGET_B_OVER_C),
        ("b/d latency p50 (Custody/DOT)", b, d, "p50_us", TARGET_B_OVER_D),
        ("b/d latency p99 (Custody/DOT)", b, d, "p99_us", None),
    ]
    for label, top, floor, key, target in rows:
        value = getattr(top, key[:3]) / getattr(floor, key[:3])
        rounds = " ".join(
            f"{mine.wrk[key] / theirs.wrk[key]:.2f}"
            for mine, theirs in zip(top.runs, floor.runs, strict=True)
        )
        wanted = f"<= {target}" if target else "(info)"
        met = verdict(value, target) if target else ""
        print(f"{label:<34}{value:>9.2f}x{wanted:>9}  {met:<9}{rounds}")
    print(f"{'c/a throughput (info)':<34}{c.rps / a.rps:>9.2f}x")
    print(f"{'c/b throughput (info)':<34}{c.rps / b.rps:>9.2f}x")
    print(f"{'b/d throughput, Custody/DOT (info)':<34}{b.rps / d.rps:>9.2f}x")
    for top, floor in ((a, c), (b, c), (b, d)):
        # CPU per request moves least when other work shares the machine.
        label = f"{top.key}/{floor.key} worker CPU per request (info)"
        print(f"{label:<34}{top.cpu_ms_per_request / floor.cpu_ms_per_request:>9.2f}x")
    print()
    print(
        f"(p) in-process, µs per call, median of {figures.rounds} interleaved rounds x "
        f"{figures.calls} calls:"
    )
    for name, micros in figures.micros.items():
        print(f"    {name:<80}{micros:>8.1f} µs")
    raw = figures.micros[RAW_SINGLE]
    ratio = figures.micros[DECIDE] / raw
    print(
        f"{'policy.decide / raw is_authorized':<34}{ratio:>9.2f}x"
        f"{'<= ' + str(TARGET_POLICY_OVER_CEDAR):>9}  {verdict(ratio, TARGET_POLICY_OVER_CEDAR)}"
    )
    print(
        f"{'raw batch of 2 / raw single (info)':<34}{figures.micros[RAW_BATCH] / raw:>9.2f}x"
        "  (Cedar's own cost of asking Custody's two questions)"
    )
    over_batch = figures.micros[DECIDE] / figures.micros[RAW_BATCH]
    print(f"{'policy.decide / raw batch (info)':<34}{over_batch:>9.2f}x")
    print()
    peaks = ", ".join(f"pid {pid} {kib / 1024:.1f} MiB" for pid, kib in rss.items())
    print(f"peak RSS per Custody gunicorn worker (VmHWM): {peaks}")
    print()
    print("CPU while measuring (CPU seconds / wall seconds = cores busy; all rounds together):")
    print(
        f"    {'':<3}{'wrk':>7}{'2 workers':>11}{'master':>8}{'pg bench':>10}{'pg all':>8}"
        f"{'others':>8}{'machine':>9}{'wrk µs/req':>12}{'workers µs/req':>16}{'pg µs/req':>11}"
    )
    for endpoint in (a, b, c, d):
        wall, requests = endpoint.total("wall"), endpoint.requests
        print(
            f"    {endpoint.key:<3}{endpoint.total('wrk_cpu') / wall:>7.3f}"
            f"{endpoint.total('workers_cpu') / wall:>11.2f}"
            f"{endpoint.total('master_cpu') / wall:>8.3f}"
            f"{endpoint.total('pg_bench_cpu') / wall:>10.2f}"
            f"{endpoint.total('pg_all_cpu') / wall:>8.2f}"
            f"{endpoint.total('other_cpu') / wall:>8.2f}"
            f"{100 * statistics.fmean(r.machine_busy for r in endpoint.runs):>8.0f}%"
            f"{1e6 * endpoint.total('wrk_cpu') / requests:>12.0f}"
            f"{1e6 * endpoint.total('workers_cpu') / requests:>16.0f}"
            f"{1e6 * endpoint.total('pg_bench_cpu') / requests:>11.0f}"
        )
    generator = max(e.total("wrk_cpu") / e.total("wall") for e in endpoints.values())
    busiest_other = max(r.other_cpu / r.wall for e in endpoints.values() for r in e.runs)
    if generator < 0.10:
        print(
            f"    load generator: at most {100 * generator:.1f}% of one core (wrk's own utime+stime"
            " from /proc/<pid>/stat), a small fraction of the workers' CPU per request:"
            " wrk is not the bottleneck"
        )
    else:
        print(f"    WARNING: wrk used {100 * generator:.1f}% of a core: the generator may limit")
    if busiest_other > 0.25:
        print(
            f"    NOTE: processes outside this benchmark used up to {busiest_other:.2f} cores "
            "during a run ('others'): absolute figures are perturbed; the interleaved rounds "
            "spread that over a, b and c alike"
        )
    print()
    print("the databases' active backends were (pg_stat_activity sampled at 10 Hz):")
    for endpoint in (a, b, c, d):
        waits = endpoint.waits
        count = sum(waits.values())
        top = ", ".join(f"{name} {100 * n / count:.0f}%" for name, n in waits.most_common(4))
        print(f"    {endpoint.key}: {count} samples: {top or 'none'}")
    print()
    print("server-side check (rows written while measuring vs responses wrk counted):")
    for endpoint, table in ((a, "approved access requests"), (c, "bench_floor rows")):
        written = sum(run.rows_written or 0 for run in endpoint.runs)
        print(
            f"    {endpoint.key}: {written} {table}, wrk counted {endpoint.requests} responses "
            f"(at most {args.concurrency} in flight per run may finish after wrk stops)"
        )
    print(f"    audit log after the run: {audit}")
    print(rule)


# --- main ---------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import psycopg

    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    gunicorn = subprocess.run(
        [str(Path(PYTHON).parent / "gunicorn"), "--version"], capture_output=True, text=True
    )
    with psycopg.connect(PG_ADMIN_DSN) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    from importlib.metadata import version

    return {
        "dot": version("django-oauth-toolkit"),
        "wrk": (wrk.stdout or wrk.stderr).split("[")[0].strip(),
        "gunicorn": (gunicorn.stdout or gunicorn.stderr).split()[-1].strip("()"),
        "postgres": postgres,
    }


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=int, default=28, help="measured seconds per endpoint, over all rounds"
    )
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up seconds per endpoint")
    parser.add_argument("--concurrency", type=int, default=4, help="wrk connections")
    parser.add_argument("--worker-class", choices=["sync", "gthread"], default="sync")
    parser.add_argument("--threads", type=int, default=2, help="threads per gthread worker")
    parser.add_argument("--profile", action="store_true", help="cProfile each kind in-process")
    parser.add_argument("--profile-requests", type=int, default=300)
    parser.add_argument(
        "--profile-only",
        action="store_true",
        help="seed, then only the in-process profile (no gunicorn, no wrk, no report)",
    )
    parser.add_argument(
        "--database", default=DB_NAME, help="PostgreSQL database to (re)create and use"
    )
    parser.add_argument(
        "--dot-database", default=DOT_DB_NAME, help="PostgreSQL database of the DOT peer"
    )
    parser.add_argument("--broker-db", type=int, default=6, help="Redis db of the Celery broker")
    parser.add_argument("--cache-db", type=int, default=7, help="Redis db of the cache")
    args = parser.parse_args()
    use_stores(
        database=args.database,
        dot_database=args.dot_database,
        broker_db=args.broker_db,
        cache_db=args.cache_db,
    )
    return args


def use_stores(*, database: str, dot_database: str, broker_db: int, cache_db: int) -> None:
    """Point the run at its own databases and Redis dbs, so benches of several people can run
    on one machine without dropping each other's data."""
    global DB_NAME, DOT_DB_NAME, PG_BENCH_DSN, DATABASE_URL, BROKER_URL, CACHE_URL
    for name in (database, dot_database):
        if not name.replace("_", "").isalnum():
            sys.exit(f"database name {name!r}: letters, digits and _ only")
    if database == dot_database:
        sys.exit("--database and --dot-database must differ")
    DB_NAME, DOT_DB_NAME = database, dot_database
    PG_BENCH_DSN = f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
    DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
    BROKER_URL = f"redis://127.0.0.1:6379/{broker_db}"
    CACHE_URL = f"redis://127.0.0.1:6379/{cache_db}"


def fresh_access_token(server: Gunicorn, tokens: dict[str, str]) -> str:
    """A live access token (5 minutes), minted through the API and checked active."""
    code, answer = post_json(
        f"{server.base_url}/api/v1/requests",
        request_body(f"introspected-{secrets.token_hex(4)}"),
        tokens["agent"],
    )
    if code != 201 or not (answer.get("grant") or {}).get("access_token"):
        raise RuntimeError(f"(b) minting the token to introspect: {code} {answer}")
    access_token = answer["grant"]["access_token"]
    code, answer = post_json(
        f"{server.base_url}/api/v1/introspect", {"token": access_token}, tokens["server"]
    )
    if code != 200 or answer.get("active") is not True:
        raise RuntimeError(f"(b) pre-flight introspection: {code} {answer}")
    return access_token


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get update && apt-get install -y wrk")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_on_signal)
    work_dir = Path(tempfile.mkdtemp(prefix="custody-bench-"))
    env = bench_env(str(work_dir))
    server = peer = None
    try:
        found_versions = versions()
        print(f"resetting {DB_NAME} and Redis {BROKER_URL}, {CACHE_URL}; migrating ...", flush=True)
        reset_stores()
        migrate_seconds = migrate(env)
        os.environ.update(env)

        import django

        django.setup()
        from django.db import connection

        signer = SvidSigner()
        seeded = seed(signer)
        from bench.seeding import make_every_agent_eligible

        make_every_agent_eligible()
        tokens = {"agent": signer.mint(AGENT_SPIFFE_ID), "server": signer.mint(SERVER_SPIFFE_ID)}

        if args.profile_only:
            from django.test import Client

            answer = Client(SERVER_NAME="127.0.0.1").post(
                "/api/v1/requests",
                request_body("introspected"),
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {tokens['agent']}",
            )
            in_process_checks(
                tokens,
                answer.json()["grant"]["access_token"],
                profile=True,
                profile_requests=args.profile_requests,
            )
            return 0
        print("(p) policy decision vs raw Cedar, in-process ...", flush=True)
        figures = measure_policy(seeded)
        connection.close()

        server = Gunicorn(
            env=env,
            port=free_port(),
            worker_class=args.worker_class,
            threads=args.threads,
            log_path=work_dir / "gunicorn.log",
        )
        server.start()
        print(f"gunicorn up on {server.base_url}, workers {server.workers()}", flush=True)
        print(f"(d) the peer: django-oauth-toolkit on {DOT_DB_NAME}; migrating ...", flush=True)
        peer_env, peer_tokens = dot_peer_setup(env)
        peer = Gunicorn(
            env=peer_env,
            port=free_port(),
            worker_class=args.worker_class,
            threads=args.threads,
            log_path=work_dir / "gunicorn-peer.log",
            app="bench.dot_peer.wsgi:application",
            database=DOT_DB_NAME,
            ready_path=D_PATH,
        )
        peer.start()
        print(f"peer gunicorn up on {peer.base_url}, workers {peer.workers()}", flush=True)
        peer_body = urllib.parse.urlencode({"token": peer_tokens["token"]})
        request = urllib.request.Request(
            f"{peer.base_url}{D_PATH}",
            data=peer_body.encode(),
            method="POST",
            headers={"Authorization": f"Bearer {peer_tokens['server']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        if answer.get("active") is not True:
            raise RuntimeError(f"(d) pre-flight: {answer}")

        # Pre-flight: each endpoint answers as expected before anything is timed.
        code, answer = post_json(
            f"{server.base_url}/api/v1/requests", request_body("preflight"), tokens["agent"]
        )
        if code != 201 or answer.get("status") != "approved":
            raise RuntimeError(f"(a) pre-flight: {code} {answer}")
        code, answer = post_json(f"{server.base_url}/bench/floor", {"n": 1}, tokens["agent"])
        if code != 201:
            raise RuntimeError(f"(c) pre-flight: {code} {answer}")
        access_token = fresh_access_token(server, tokens)

        endpoints = {
            "a": Endpoint("a", "(a) POST /api/v1/requests (auto-approved)", A_PATH, "agent"),
            "b": Endpoint("b", "(b) POST /api/v1/introspect", B_PATH, "server"),
            "c": Endpoint("c", "(c) POST /bench/floor (auth + 1 INSERT)", C_PATH, "agent"),
            "d": Endpoint("d", "(d) POST /o/introspect/ (django-oauth-toolkit)", D_PATH, "peer"),
        }
        count_sql = {
            "a": "SELECT count(*) FROM approvals_accessrequest WHERE status = 'approved'",
            "c": "SELECT count(*) FROM bench_floor",
        }

        def run(key: str, seconds: int) -> Run:
            nonlocal access_token
            if key == "d":
                return run_wrk(
                    peer,
                    path=D_PATH,
                    token=peer_tokens["server"],
                    body=peer_body,
                    seconds=seconds,
                    connections=args.concurrency,
                    work_dir=work_dir,
                    content_type="application/x-www-form-urlencoded",
                )
            if key == "b":
                access_token = fresh_access_token(server, tokens)
                body = json.dumps({"token": access_token})
            elif key == "a":
                body = json.dumps(request_body("__TASK__"))
            else:
                body = json.dumps({"n": 1})
            endpoint = endpoints[key]
            return run_wrk(
                server,
                path=endpoint.path,
                token=tokens[endpoint.who],
                body=body,
                seconds=seconds,
                connections=args.concurrency,
                work_dir=work_dir,
                count_rows_sql=count_sql.get(key),
            )

        print(f"warm-up: {args.warmup} s each for a, b, c, d ...", flush=True)
        for key in endpoints:
            run(key, args.warmup)
        seconds = max(1, args.duration // args.rounds)
        order = list(endpoints)
        for number in range(args.rounds):
            keys = order[number % len(order) :] + order[: number % len(order)]
            label = " ".join(keys)
            print(f"round {number + 1}/{args.rounds}: {label}, {seconds} s each", flush=True)
            for key in keys:
                endpoints[key].runs.append(run(key, seconds))
        rss = {pid: vm_hwm_kib(pid) or 0 for pid in server.workers()}
        # Statements per request, counted by the servers themselves (bench/sql_count.py).
        json_type = "application/json"
        sql = {
            "a": sql_per_request(
                f"{server.base_url}{A_PATH}",
                lambda: json.dumps(request_body(f"sql-{secrets.token_hex(4)}")).encode(),
                tokens["agent"],
                json_type,
            ),
            "b": sql_per_request(
                f"{server.base_url}{B_PATH}",
                json.dumps({"token": fresh_access_token(server, tokens)}).encode(),
                tokens["server"],
                json_type,
            ),
            "c": sql_per_request(
                f"{server.base_url}{C_PATH}", b'{"n": 1}', tokens["agent"], json_type
            ),
            "d": sql_per_request(
                f"{peer.base_url}{D_PATH}",
                peer_body.encode(),
                peer_tokens["server"],
                "application/x-www-form-urlencoded",
            ),
        }
        server.stop()
        peer.stop()

        in_process_checks(
            tokens, access_token, profile=args.profile, profile_requests=args.profile_requests
        )
        audit = verify_audit()
        connection.close()
        print_report(
            args=args,
            endpoints=endpoints,
            figures=figures,
            rss=rss,
            versions=found_versions,
            queries=sql,
            audit=audit,
            migrate_seconds=migrate_seconds,
        )
        return 0
    except Exception:
        log = work_dir / "gunicorn.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print("--- last lines of the gunicorn log ---", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        for started in (server, peer):
            if started is not None:
                started.stop()
        _stop_children()
        flush_redis()
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
