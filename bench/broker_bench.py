"""Brokered PostgreSQL credentials: from a grant's end to the credential being unusable.

    PYTHONPATH=client .venv/bin/python bench/broker_bench.py [--grants 500] [--window 60]
        [--outage 30] [--scenarios steady,outage] [--broker-sweep-seconds 10] [--sample 30]
        [--admin superuser|createrole]

What it starts (and stops on exit, error or SIGTERM):
- the *target*: its own PostgreSQL cluster (bench/target_cluster.py: initdb in a temporary
  folder, a free port, fsync off, SCRAM passwords over TCP) holding a `payments` database and
  the group role `payments_read` (SELECT on `invoices`). Custody's broker connects through
  CUSTODY_BROKER_BENCH_TARGET_DSN as the cluster's superuser, or with `--admin createrole` as
  `broker_admin` (CREATEROLE, ADMIN OPTION on the group role, pg_signal_backend: least
  privilege). The machine's PostgreSQL on 5432 is never stopped: Custody's own database,
  `custody_broker_bench`, lives there (dropped, created and migrated each run);
- its own redis-server on a free port (Celery broker db 0, cache db 1);
- Custody under gunicorn (2 gthread workers × 4 threads) and one Celery worker with beat
  embedded, on production settings (DEBUG off).

Each scenario issues `--grants` grants of `payments-db:read`, a privilege whose broker is
PostgreSQL ({target, group_role, connection_limit}), through the real HTTP API: the agent asks
(`POST /api/v1/requests`, approved by policy at once) and fetches its credential
(`POST /api/v1/grants/{id}/credential`). Their ends fall evenly within one `--window`: by
default 60 % expire (the worker's ETA task, beat's sweep behind it), 20 % are revoked
(`grant_revoke`, the service the revoke page and admin call, from this process) and 20 % are
completed by the agent (`POST /api/v1/grants/{id}/complete`). A thread polls the target's
`pg_roles` every `--poll-ms` and stamps the first poll a credential's role is absent; another
tries a real login with a sample of the credentials (and holds an open session for each in the
steady scenario) until the login is refused and the session is terminated. Figures are taken
from the grant's `revoked_at` (its end, as Custody recorded it) to those moments.

The outage scenario stops the target (`pg_ctl stop -m fast`) when half the window has passed
and starts it `--outage` seconds later: destructions fail meanwhile, stay pending in the outbox
and are retried; figures are given from the grant's end and from the target being back up.
Afterwards every scenario counts the roles left behind (`pg_roles` `custody_%`, target 0).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "client"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench.target_cluster import TargetCluster, free_port, wait_until_accepting  # noqa: E402

DB_NAME = "custody_broker_bench"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET = "bench_target"  # the broker configuration's target: CUSTODY_BROKER_BENCH_TARGET_DSN
TARGET_DB = "payments"
GROUP_ROLE = "payments_read"
ADMIN_ROLE = "broker_admin"
ROLE_PATTERN = "custody_%"  # every role Custody's PostgreSQL broker creates
CONNECTION_LIMIT = 3  # the held session and a login attempt fit under it
PRIVILEGE = "payments-db:read"
KINDS = ("expired", "revoked", "completed")
INTENT = {
    "action": "reconcile invoices",
    "target": "invoices 2026-11",
    "justification": "3 invoices do not match the ledger.",
}


# --- statistics (pure; tests/bench/test_broker_bench.py checks them) ------------------------------


def percentile(values, share: float) -> float:
    """Nearest-rank percentile (the smallest value with at least `share` of them at or below
    it); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(share * len(ordered) - 1e-9)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values) -> Summary:
        values = list(values)
        return cls(
            count=len(values),
            p50=percentile(values, 0.5),
            p99=percentile(values, 0.99),
            max=max(values) if values else float("nan"),
        )


class RoleWatch:
    """What the pg_roles poller learned: for each tracked role, the first poll that saw it and
    the first poll after that which did not (the moment it was gone, to the poll's resolution).
    A role never seen present is never counted gone (it may not have been created yet)."""

    def __init__(self):
        self.tracked: set[str] = set()
        self.seen: set[str] = set()
        self.gone_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def track(self, name: str) -> None:
        with self._lock:
            self.tracked.add(name)

    def observe(self, present: set[str], at: float) -> None:
        with self._lock:
            for name in self.tracked:
                if name in present:
                    self.seen.add(name)
                elif name in self.seen and name not in self.gone_at:
                    self.gone_at[name] = at

    def live(self) -> set[str]:
        with self._lock:
            return self.tracked - set(self.gone_at)


def split_kinds(count: int, mix: dict[str, int]) -> list[str]:
    """`count` endings in the proportions of `mix`, interleaved so that each kind is spread
    over the whole window (largest remainder, then round-robin by deficit)."""
    total = sum(mix.values())
    quotas = {kind: count * weight / total for kind, weight in mix.items()}
    counts = {kind: int(quota) for kind, quota in quotas.items()}
    for kind in sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True):
        if sum(counts.values()) >= count:
            break
        counts[kind] += 1
    order, given = [], dict.fromkeys(counts, 0)
    for position in range(count):
        kind = max(counts, key=lambda k: counts[k] * (position + 1) / count - given[k])
        order.append(kind)
        given[kind] += 1
    return order


def delays(ends: dict, marks: dict) -> list[float]:
    """Seconds from each end to its mark, for the keys that have both."""
    return [marks[key] - ends[key] for key in ends if key in marks]


def after_recovery(ends: dict, marks: dict, down_at: float, up_at: float) -> list[float]:
    """Seconds from the target being back up to the mark, for credentials that were still
    there when it went down and whose grant ended before it came back."""
    return [
        marks[key] - up_at
        for key, end in ends.items()
        if key in marks and end < up_at and marks[key] > down_at
    ]


# --- processes ------------------------------------------------------------------------------------


class RedisServer:
    """A throwaway redis-server on a free port: nothing else shares, reads or flushes it."""

    def __init__(self, folder: Path):
        import shutil
        import socket

        self.port = free_port()
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        stop_group(self.process)
        raise RuntimeError("redis-server did not start")


def stop_group(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group, SIGKILL what is left after `grace` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


class Service:
    """A subprocess in its own process group with its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict, var_dir: Path, ready):
        self.name = name
        self.command = command
        self.log_path = var_dir / f"{name}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120  # start-up stays out of the figures
        while not ready(self):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{self.output()[-4000:]}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_group(self.process)
        if not self.log.closed:
            self.log.close()


def start_gunicorn(env: dict, var_dir: Path) -> tuple[Service, str]:
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def healthy(service) -> bool:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/healthz", timeout=2) as response,
        ):
            return response.status == 200
        return False

    command = [
        str(Path(sys.executable).with_name("gunicorn")), "config.wsgi",
        "--config=gunicorn.conf.py", f"--bind=127.0.0.1:{port}", "--workers=2",
        "--worker-class=gthread", "--threads=4", "--timeout=60",
    ]  # fmt: skip
    return Service("gunicorn", command, env, var_dir, healthy), url


def worker_command(args) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
        f"--concurrency={args.concurrency}", f"--queues={args.queues}", "--beat",
        f"--hostname=broker-bench-{os.getpid()}@%h",
    ]  # fmt: skip


def start_worker(env: dict, var_dir: Path, args) -> Service:
    return Service("worker", worker_command(args), env, var_dir, lambda s: " ready." in s.output())


# --- the target -----------------------------------------------------------------------------------


@dataclass
class Target:
    cluster: TargetCluster
    admin_password: str
    admin: str  # who Custody's broker connects as: superuser, or createrole (least privilege)

    @property
    def broker_dsn(self) -> str:
        if self.admin == "superuser":
            return self.cluster.dsn("postgres", self.cluster.superuser_password, TARGET_DB)
        return self.cluster.dsn(ADMIN_ROLE, self.admin_password, TARGET_DB)

    def roles_left(self) -> int:
        rows = self.cluster.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE %s", params=[ROLE_PATTERN]
        )
        return rows[0][0]


def start_target(admin: str = "superuser") -> Target:
    import secrets

    cluster = TargetCluster()
    cluster.start()
    wait_until_accepting(cluster)
    password = secrets.token_urlsafe(24)
    cluster.execute(f"CREATE DATABASE {TARGET_DB}")
    for sql in (
        f"CREATE ROLE {GROUP_ROLE} NOLOGIN",
        f"CREATE ROLE {ADMIN_ROLE} LOGIN CREATEROLE PASSWORD '{password}'",
        f"GRANT pg_signal_backend TO {ADMIN_ROLE}",
        f"GRANT {GROUP_ROLE} TO {ADMIN_ROLE} WITH ADMIN OPTION",
        f"GRANT CONNECT ON DATABASE {TARGET_DB} TO {GROUP_ROLE}",
        "CREATE TABLE invoices (id bigserial PRIMARY KEY, amount numeric NOT NULL)",
        "INSERT INTO invoices (amount) SELECT n * 10 FROM generate_series(1, 100) AS n",
        f"GRANT SELECT ON invoices TO {GROUP_ROLE}",
    ):
        cluster.execute(sql, dbname=TARGET_DB)
    return Target(cluster=cluster, admin_password=password, admin=admin)


class RolePoller(threading.Thread):
    """Every `interval` seconds: the roles named like Custody's in the target's pg_roles (over
    the cluster's Unix socket, as its superuser). A failed poll (the target is down) is counted
    and tried again at the same pace."""

    def __init__(self, target: Target, watch: RoleWatch, interval: float):
        super().__init__(name="role-poller", daemon=True)
        self.target, self.watch, self.interval = target, watch, interval
        self.stopping = threading.Event()
        self.polls = self.failed = 0

    def run(self) -> None:
        import psycopg

        conn = None
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg.connect(
                        self.target.cluster.superuser_conninfo(), autocommit=True,
                        connect_timeout=2,
                    )  # fmt: skip
                rows = conn.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [ROLE_PATTERN]
                ).fetchall()
                self.watch.observe({name for (name,) in rows}, time.time())
                self.polls += 1
            except psycopg.Error:
                self.failed += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))
        if conn is not None:
            conn.close()


# --- credentials ----------------------------------------------------------------------------------


@dataclass
class Credential:
    grant_id: int
    position: int  # in the plan: its end's slot in the window
    kind: str  # how the grant will end: expired, revoked, completed
    planned_end: float  # epoch seconds: its expiry, or when the bench ends it
    username: str
    password: str
    host: str
    port: int
    dbname: str

    def conninfo(self) -> dict:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.username,
            "password": self.password,
            "dbname": self.dbname,
        }


def credential_from_answer(
    grant_id: int, position: int, kind: str, planned_end: float, answer: dict
) -> Credential:
    """The agent's one delivery of its credential, as `POST /api/v1/grants/{id}/credential`
    answers it."""
    secret = answer.get("secret", answer)
    return Credential(
        grant_id=grant_id,
        position=position,
        kind=kind,
        planned_end=planned_end,
        username=secret["username"],
        password=secret["password"],
        host=secret.get("host", "127.0.0.1"),
        port=int(secret["port"]),
        dbname=secret.get("dbname") or secret.get("database") or TARGET_DB,
    )


def refused_by_target(error: Exception) -> bool:
    """A login the target answered and refused (unknown role, bad or expired password, no
    LOGIN), as opposed to a target that did not answer (down, restarting)."""
    text = str(error)
    return any(
        phrase in text
        for phrase in (
            "password authentication failed",
            "does not exist",
            "is not permitted to log in",
        )
    )


class Agent:
    """The agent's side over HTTP: ask, fetch the credential once, complete."""

    def __init__(self, base_url: str, signer, spiffe_id: str):
        import httpx

        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.signer, self.spiffe_id = signer, spiffe_id

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.signer.mint(self.spiffe_id)}"}

    def issue(self, *, task_id: str, position: int, kind: str, duration: int) -> Credential:
        """Ask (approved by policy at once) and fetch the credential. Its planned end is the
        grant's expiry until the bench plans another."""
        answer = self.http.post(
            "/api/v1/requests",
            json={
                "privilege": PRIVILEGE,
                "task_id": task_id,
                "duration_seconds": duration,
                "intent": INTENT,
            },
            headers=self._headers(),
        )
        body = answer.json()
        if answer.status_code != 201 or body.get("status") != "approved":
            raise RuntimeError(f"request {task_id}: {answer.status_code} {body}")
        grant = body["grant"]
        expires_at = datetime.fromisoformat(grant["expires_at"].replace("Z", "+00:00"))
        delivered = self.http.post(
            f"/api/v1/grants/{grant['id']}/credential", headers=self._headers()
        )
        if delivered.status_code not in (200, 201):
            raise RuntimeError(
                f"credential of grant {grant['id']}: {delivered.status_code} {delivered.text}"
            )
        return credential_from_answer(
            grant["id"], position, kind, expires_at.timestamp(), delivered.json()
        )

    def complete(self, grant_id: int) -> int:
        return self.http.post(
            f"/api/v1/grants/{grant_id}/complete", headers=self._headers()
        ).status_code

    def close(self) -> None:
        self.http.close()


class LoginProber(threading.Thread):
    """For a sample of credentials: while granted, one login proves reads work and writes are
    refused (and, in the steady scenario, stays open); from the credential's planned end, a new
    login every `interval` until the target refuses it, and `SELECT 1` on the open session until
    it is terminated. Failures of a target that is down are not refusals."""

    def __init__(self, credentials: list[Credential], interval: float, hold_sessions: bool):
        super().__init__(name="login-prober", daemon=True)
        self.credentials, self.interval = credentials, interval
        self.hold_sessions = hold_sessions
        self.sessions: dict[int, object] = {}
        self.refused_at: dict[int, float] = {}
        self.terminated_at: dict[int, float] = {}
        self.sessions_lost_to_outage = 0
        self.reads_ok = self.writes_refused = self.checked = 0
        self.outage = threading.Event()  # set while the bench has the target stopped
        self.stopping = threading.Event()

    def check_while_granted(self) -> None:
        import psycopg

        for credential in self.credentials:
            conn = psycopg.connect(**credential.conninfo(), autocommit=True, connect_timeout=5)
            self.checked += 1
            if conn.execute("SELECT count(*) FROM invoices").fetchone()[0] > 0:
                self.reads_ok += 1
            try:
                conn.execute("INSERT INTO invoices (amount) VALUES (1)")
            except psycopg.errors.InsufficientPrivilege:
                self.writes_refused += 1
            if self.hold_sessions:
                self.sessions[credential.grant_id] = conn
            else:
                conn.close()

    def run(self) -> None:
        import psycopg

        while not self.stopping.is_set():
            started = time.monotonic()
            now = time.time()
            for credential in self.credentials:
                if credential.planned_end > now:
                    continue
                key = credential.grant_id
                session = self.sessions.get(key)
                if session is not None and key not in self.terminated_at:
                    try:
                        session.execute("SELECT 1")
                    except psycopg.Error:
                        if self.outage.is_set():
                            self.sessions_lost_to_outage += 1
                        else:
                            self.terminated_at[key] = time.time()
                        self.sessions.pop(key)
                        with contextlib.suppress(Exception):
                            session.close()
                if key in self.refused_at:
                    continue
                try:
                    conn = psycopg.connect(**credential.conninfo(), connect_timeout=2)
                except psycopg.OperationalError as error:
                    if refused_by_target(error):
                        self.refused_at[key] = time.time()
                else:
                    conn.close()
            self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))
        for session in self.sessions.values():
            with contextlib.suppress(Exception):
                session.close()


# --- Custody --------------------------------------------------------------------------------------


def environment(var_dir: Path, redis_port: int, target: Target, args) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CUSTODY_BROKER_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DEBUG="false",
        SECRET_KEY="bench-only-secret-key-brokers-0123456789abcdefghij",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        CACHE_URL=f"redis://127.0.0.1:{redis_port}/1",
        CUSTODY_VAR_DIR=str(var_dir),
        LOG_LEVEL="INFO",
        PYTHONPATH=f"{ROOT}:{ROOT / 'client'}",
        PYTHONUNBUFFERED="1",
        CUSTODY_CUMULATIVE_FACTOR="0",
        CUSTODY_MAX_PENDING_PER_AGENT="1000000",
        CUSTODY_SWEEP_SECONDS=str(args.sweep_seconds),
        CUSTODY_BROKER_SWEEP_SECONDS=str(args.broker_sweep_seconds),
        **{f"CUSTODY_BROKER_{TARGET.upper()}_DSN": target.broker_dsn},
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


def seed_custody(signer):
    """The bench's trust domain, agent and resource server (bench/api_bench.py's seed), every
    agent eligible, and the privilege's PostgreSQL broker."""
    from bench.api_bench import seed
    from bench.seeding import make_every_agent_eligible

    seeded = seed(signer)
    make_every_agent_eligible()
    attach_broker(seeded.privilege)
    return seeded


def attach_broker(privilege) -> None:
    """payments-db:read gets the PostgreSQL broker, as an admin saving it in admin would (the
    broker checks the group role exists on the target)."""
    from audit.services import Actor
    from brokers.models import PrivilegeBroker
    from brokers.services import privilege_broker_save

    privilege_broker_save(
        privilege_broker=PrivilegeBroker(
            privilege=privilege,
            kind="postgresql",
            config={
                "target": TARGET,
                "group_role": GROUP_ROLE,
                "connection_limit": CONNECTION_LIMIT,
            },
        ),
        actor=Actor.system("bench"),
    )


@dataclass(frozen=True)
class Outbox:
    """Custody's side of these grants' credentials, read from the outbox rows."""

    not_destroyed: int
    destroyed_after_end: list  # destroyed_at - end_requested_at, seconds
    attempts_max: int
    attempts_total: int
    last_errors: list


def outbox(grant_ids: list[int]) -> Outbox:
    from brokers.models import BrokeredCredential

    rows = list(
        BrokeredCredential.objects.filter(grant_id__in=grant_ids).values_list(
            "state", "end_requested_at", "destroyed_at", "attempts", "last_error"
        )
    )
    destroyed = BrokeredCredential.State.DESTROYED
    return Outbox(
        not_destroyed=sum(1 for state, *_ in rows if state != destroyed),
        destroyed_after_end=[
            (done - asked).total_seconds()
            for state, asked, done, _, _ in rows
            if state == destroyed and asked and done
        ],
        attempts_max=max((attempts for *_, attempts, _ in rows), default=0),
        attempts_total=sum(attempts for *_, attempts, _ in rows),
        last_errors=sorted({error for *_, error in rows if error})[:3],
    )


def now_epoch() -> float:
    return time.time()


# --- one scenario ---------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    name: str
    outage: bool
    kinds: dict = field(default_factory=dict)
    issue_seconds: float = 0.0
    issue_rate: float = 0.0
    margin_seconds: float = 0.0
    window_start: float = 0.0
    ends: dict = field(default_factory=dict)  # grant id → revoked_at (epoch seconds)
    reasons: dict = field(default_factory=dict)  # grant id → revoke_reason
    gone: dict = field(default_factory=dict)  # grant id → first poll without its role
    refused: dict = field(default_factory=dict)  # grant id → login refused (sample)
    terminated: dict = field(default_factory=dict)  # grant id → open session ended (sample)
    sample: int = 0
    reads_ok: int = 0
    writes_refused: int = 0
    sessions_lost_to_outage: int = 0
    down_at: float | None = None
    up_at: float | None = None
    not_ended: int = 0
    never_seen: int = 0
    roles_left: int = -1
    outbox: Outbox | None = None
    end_errors: list = field(default_factory=list)
    polls: int = 0
    failed_polls: int = 0
    waited_after_window: float = 0.0
    worker_log: dict = field(default_factory=dict)


def plan(args) -> list[str]:
    mix = dict(zip(KINDS, (args.expired, args.revoked, args.completed), strict=True))
    return split_kinds(args.grants, {kind: weight for kind, weight in mix.items() if weight})


def issue_all(name: str, kinds: list[str], args, custody_url: str, signer, watch: RoleWatch):
    """Every credential over HTTP, `args.issuers` agents' connections at a time. The ones the
    bench ends (revoked, completed) first, with time to spare (900 s, the most policy approves
    at once), which also times issuing; then the expiring ones, each asking for the duration
    that puts its expiry at its slot in the window. Returns (credentials, window start)."""
    from bench.api_bench import AGENT_SPIFFE_ID

    agents = [Agent(custody_url, signer, AGENT_SPIFFE_ID) for _ in range(args.issuers)]
    spare = list(agents)
    local = threading.local()
    lock = threading.Lock()

    def issue(position: int, duration_until: float | None) -> Credential:
        if not hasattr(local, "agent"):
            with lock:
                local.agent = spare.pop()
        duration = 900 if duration_until is None else max(1, round(duration_until - time.time()))
        credential = local.agent.issue(
            task_id=f"{name}-{position}-{kinds[position]}",
            position=position,
            kind=kinds[position],
            duration=duration,
        )
        watch.track(credential.username)
        return credential

    started = time.monotonic()
    by_bench = [i for i, kind in enumerate(kinds) if kind != "expired"]
    expiring = [i for i, kind in enumerate(kinds) if kind == "expired"]
    try:
        with ThreadPoolExecutor(args.issuers) as pool:
            credentials = list(pool.map(lambda i: issue(i, None), by_bench))
            per_grant = (time.monotonic() - started) / max(len(by_bench), 1)
            window_start = time.time() + max(args.lead, 10 + 1.5 * per_grant * len(expiring))
            slot = slots(window_start, args.window, len(kinds))
            if window_start + args.window > time.time() + 900 - 60:
                raise RuntimeError("issuing is too slow: the window would outlast the grants")
            credentials += pool.map(lambda i: issue(i, slot[i]), expiring)
    finally:
        for agent in agents:
            agent.close()
    for credential in credentials:
        if credential.kind != "expired":
            credential.planned_end = slot[credential.position]
    return credentials, window_start, time.monotonic() - started


def slots(window_start: float, window: float, count: int) -> list[float]:
    """`count` moments spread evenly from the window's start to its end, both included."""
    step = window / max(count - 1, 1)
    return [window_start + i * step for i in range(count)]


def end_by_bench(credentials, custody_url: str, signer, errors: list) -> threading.Thread:
    """A thread that revokes (the service the revoke page and admin call) or completes (the
    agent's HTTP call) each credential's grant at its planned end."""
    import django.db

    from approvals.models import Grant
    from approvals.services import grant_revoke
    from audit.services import Actor
    from bench.api_bench import AGENT_SPIFFE_ID

    planned = sorted((c for c in credentials if c.kind != "expired"), key=lambda c: c.planned_end)

    def run() -> None:
        agent = Agent(custody_url, signer, AGENT_SPIFFE_ID)
        try:
            for credential in planned:
                time.sleep(max(0.0, credential.planned_end - time.time()))
                try:
                    if credential.kind == "revoked":
                        grant_revoke(
                            grant=Grant.objects.get(pk=credential.grant_id),
                            actor=Actor.system("bench"),
                            detail="broker bench",
                        )
                    elif (status := agent.complete(credential.grant_id)) != 200:
                        errors.append((credential.grant_id, status))
                except Exception as error:  # reported in the table
                    errors.append((credential.grant_id, repr(error)))
        finally:
            agent.close()
            django.db.connections.close_all()

    thread = threading.Thread(target=run, name="ender", daemon=True)
    thread.start()
    return thread


def run_scenario(
    name: str, args, target: Target, custody_url: str, signer, worker: Service
) -> ScenarioResult:
    from approvals.models import Grant

    outage = name == "outage"
    result = ScenarioResult(name=name, outage=outage)
    log_offset = len(worker.output())
    kinds = plan(args)
    result.kinds = {kind: kinds.count(kind) for kind in KINDS}
    watch = RoleWatch()
    poller = RolePoller(target, watch, args.poll_ms / 1000)
    poller.start()
    credentials, window_start, result.issue_seconds = issue_all(
        name, kinds, args, custody_url, signer, watch
    )
    result.window_start = window_start
    result.issue_rate = len(credentials) / result.issue_seconds
    # A sample spread over the window (so over the kinds too): logins while granted, then after.
    by_end = sorted(credentials, key=lambda c: c.planned_end)
    every = max(1, len(by_end) // max(args.sample, 1))
    sample = by_end[::every][: args.sample]
    prober = LoginProber(sample, args.poll_ms / 1000, hold_sessions=not outage)
    prober.check_while_granted()
    result.sample, result.reads_ok = prober.checked, prober.reads_ok
    result.writes_refused = prober.writes_refused
    deadline = time.monotonic() + 10
    while len(watch.seen) < len(credentials) and time.monotonic() < deadline:
        time.sleep(0.1)
    result.never_seen = len(credentials) - len(watch.seen)
    result.margin_seconds = window_start - time.time()
    print(
        f"  [{name}] {len(credentials)} credentials issued over HTTP in "
        f"{result.issue_seconds:.1f} s ({result.issue_rate:.1f}/s); window opens in "
        f"{result.margin_seconds:.1f} s",
        flush=True,
    )
    prober.start()
    ender = end_by_bench(credentials, custody_url, signer, result.end_errors)

    if outage:
        time.sleep(max(0.0, window_start + args.window / 2 - time.time()))
        prober.outage.set()
        result.down_at = time.time()
        target.cluster.stop("fast")
        print(f"  [{name}] target stopped for {args.outage} s", flush=True)
        time.sleep(max(0.0, result.down_at + args.outage - time.time()))
        target.cluster.start()
        result.up_at = time.time()
        prober.outage.clear()
        print(f"  [{name}] target back up", flush=True)
    ender.join()

    # Until every grant has ended, every role is gone and every sampled login is refused.
    ids = [c.grant_id for c in credentials]
    window_end = window_start + args.window
    give_up = max(window_end, result.up_at or 0) + args.grace
    live_grants = Grant.objects.filter(pk__in=ids, revoked_at__isnull=True)
    while time.time() < give_up:
        if not watch.live() and len(prober.refused_at) == len(sample) and not live_grants.exists():
            break
        time.sleep(0.5)
    result.waited_after_window = time.time() - window_end
    prober.stopping.set()
    poller.stopping.set()
    prober.join()
    poller.join()

    grant_of = {c.username: c.grant_id for c in credentials}
    rows = Grant.objects.filter(pk__in=ids).values_list("pk", "revoked_at", "revoke_reason")
    for grant_id, revoked_at, reason in rows:
        if revoked_at is None:
            result.not_ended += 1
        else:
            result.ends[grant_id] = revoked_at.timestamp()
            result.reasons[grant_id] = reason
    result.gone = {grant_of[name]: at for name, at in watch.gone_at.items()}
    result.refused = dict(prober.refused_at)
    result.terminated = dict(prober.terminated_at)
    result.sessions_lost_to_outage = prober.sessions_lost_to_outage
    result.polls, result.failed_polls = poller.polls, poller.failed
    result.roles_left = target.roles_left()
    result.outbox = outbox(ids)
    result.worker_log = read_worker_log(worker.output()[log_offset:])
    return result


DESTROY = r"Task brokers\.tasks\.destroy_credential\[[^\]]+\] "
DESTROY_RECEIVED = re.compile(DESTROY + "received")
DESTROY_RAN = re.compile(DESTROY + r"succeeded in ([\d.]+)s: '(\w+)'")
DESTROY_RETRY = re.compile(DESTROY + "retry")
SWEEP_SENT = re.compile(
    r"Task brokers\.tasks\.sweep_credentials\[[^\]]+\] succeeded in [\d.]+s: (\d+)"
)


def read_worker_log(text: str) -> dict:
    """The worker's own account of the destroy tasks: how many it received, what each run
    came to (`destroyed`, or `skipped`: not due or already claimed, e.g. a duplicate the sweep
    sent), the retries, how long a run that destroyed took, and how many the sweep resent."""
    outcomes: dict[str, int] = {}
    destroy_seconds = []
    for run_seconds, outcome in DESTROY_RAN.findall(text):
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "destroyed":
            destroy_seconds.append(float(run_seconds))
    return {
        "received": len(DESTROY_RECEIVED.findall(text)),
        "outcomes": outcomes,
        "retries": len(DESTROY_RETRY.findall(text)),
        "destroy_seconds": destroy_seconds,
        "sweep_sent": sum(int(sent) for sent in SWEEP_SENT.findall(text)),
        "errors": len(re.findall(r"\bERROR\b", text)),
    }


# --- report ---------------------------------------------------------------------------------------


def seconds(value: float) -> str:
    return "-" if value != value else f"{value:.3f} s"


def triple(summary: Summary) -> str:
    if not summary.count:
        return "-"
    return f"{summary.p50:.2f} / {summary.p99:.2f} / {summary.max:.2f}"


def report(results: list[ScenarioResult], args, config: dict) -> None:
    def row(label: str, values, target: str = "") -> None:
        cells = "".join(f"{value:>26}" for value in values)
        print(f"{label:44}{cells}   {target}".rstrip())

    def each(value):
        return [value(r) for r in results]

    print()
    for key, value in config.items():
        print(f"{key + ':':22}{value}")
    print()
    titles = {"steady": "target up", "outage": f"target down {args.outage} s"}
    row("", each(lambda r: titles[r.name]), "target")
    row("", each(lambda r: "-" * 24), "-" * 6)
    row(
        "grants: expired / revoked / completed",
        each(lambda r: " / ".join(str(r.kinds[k]) for k in KINDS)),
    )
    row(
        "credentials issued over HTTP",
        each(lambda r: f"{sum(r.kinds.values())} in {r.issue_seconds:.0f} s"),
    )
    row("setup done before the window", each(lambda r: f"{r.margin_seconds:.1f} s"), "> 0")
    row(
        "sample: reads ok / writes refused",
        each(lambda r: f"{r.reads_ok}/{r.sample} / {r.writes_refused}/{r.sample}"),
        "all",
    )
    row(
        "target stopped (from window start)",
        each(
            lambda r: (
                "-"
                if r.down_at is None
                else f"+{r.down_at - r.window_start:.1f} s for {r.up_at - r.down_at:.1f} s"
            )
        ),
    )
    print("role gone from pg_roles, from the grant's end (s):")
    gone = {r.name: Summary.of(delays(r.ends, r.gone)) for r in results}
    row("  p50", each(lambda r: seconds(gone[r.name].p50)))
    row("  p99", each(lambda r: seconds(gone[r.name].p99)))
    row("  max", each(lambda r: seconds(gone[r.name].max)))
    row("  count", each(lambda r: f"{gone[r.name].count} of {sum(r.kinds.values())}"), "all")
    for kind, reasons in (("expired", {"expired"}), ("revoked", {"revoked"}), ("completed",
                          {"completed"})):  # fmt: skip

        def by_kind(r, reasons=reasons):
            ends = {g: t for g, t in r.ends.items() if r.reasons.get(g) in reasons}
            return triple(Summary.of(delays(ends, r.gone)))

        row(f"  {kind}: p50 / p99 / max", each(by_kind))
    row(
        "  from target back up: p50 / p99 / max",
        each(
            lambda r: (
                "-"
                if r.up_at is None
                else triple(Summary.of(after_recovery(r.ends, r.gone, r.down_at, r.up_at)))
            )
        ),
    )
    row(
        "    credentials waiting for it",
        each(
            lambda r: (
                "-"
                if r.up_at is None
                else str(len(after_recovery(r.ends, r.gone, r.down_at, r.up_at)))
            )
        ),
    )
    row(
        "login refused, from grant end (sample)",
        each(lambda r: triple(Summary.of(delays(r.ends, r.refused)))),
        "p50 / p99 / max s",
    )
    row(
        "  refused / sample",
        each(lambda r: f"{len(r.refused)}/{r.sample}"),
        "all",
    )
    row(
        "  from target back up: p50 / p99 / max",
        each(
            lambda r: (
                "-"
                if r.up_at is None
                else triple(Summary.of(after_recovery(r.ends, r.refused, r.down_at, r.up_at)))
            )
        ),
    )
    row(
        "open session ended, from grant end",
        each(
            lambda r: "not held" if r.outage else triple(Summary.of(delays(r.ends, r.terminated)))
        ),
        "p50 / p99 / max s",
    )
    row(
        "  terminated / held",
        each(lambda r: "-" if r.outage else f"{len(r.terminated)}/{r.sample}"),
        "all",
    )
    row("grants not ended", each(lambda r: str(r.not_ended)), "0")
    row("roles never seen in pg_roles", each(lambda r: str(r.never_seen)), "0")
    row(
        f"roles left behind ({ROLE_PATTERN})",
        each(lambda r: str(r.roles_left)),
        "0: " + ("ok" if all(r.roles_left == 0 for r in results) else "MISSED"),
    )
    row(
        "Custody: destructions not confirmed",
        each(lambda r: str(r.outbox.not_destroyed)),
        "0: " + ("ok" if all(r.outbox.not_destroyed == 0 for r in results) else "MISSED"),
    )
    row(
        "Custody: destroyed_at - end, p50/p99/max",
        each(lambda r: triple(Summary.of(r.outbox.destroyed_after_end))),
        "its own clock",
    )
    row(
        "Custody: destroy attempts, total / max",
        each(lambda r: f"{r.outbox.attempts_total} / {r.outbox.attempts_max}"),
    )
    row("bench's revoke/complete calls failed", each(lambda r: str(len(r.end_errors))), "0")
    row("waited after window end", each(lambda r: f"{r.waited_after_window:.1f} s"))
    row("pg_roles polls (failed)", each(lambda r: f"{r.polls} ({r.failed_polls})"))

    row(
        "worker: destroy tasks received",
        each(lambda r: str(r.worker_log["received"])),
        "one per credential and retry",
    )
    row(
        "  runs destroyed / retried / skipped",
        each(
            lambda r: (
                f"{r.worker_log['outcomes'].get('destroyed', 0)} / "
                f"{r.worker_log['retries']} / {r.worker_log['outcomes'].get('skipped', 0)}"
            )
        ),
        "skipped: not due or claimed",
    )
    row(
        "  run that destroyed: p50 / p99 / max",
        each(lambda r: triple(Summary.of(r.worker_log["destroy_seconds"]))),
        "seconds",
    )
    row("  resent by the sweep", each(lambda r: str(r.worker_log["sweep_sent"])))
    row("  ERROR lines", each(lambda r: str(r.worker_log["errors"])))
    for r in results:
        for grant_id, error in r.end_errors[:3]:
            print(f"  {r.name}: grant {grant_id}: {error}")
        for error in r.outbox.last_errors:
            print(f"  {r.name}: a destroy attempt failed: {error}")


# --- main -----------------------------------------------------------------------------------------


def max_backoff() -> int:
    from django.conf import settings

    return settings.CUSTODY_BROKER_MAX_BACKOFF_SECONDS


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grants", type=int, default=500)
    parser.add_argument("--window", type=float, default=60, help="seconds the ends spread over")
    parser.add_argument("--outage", type=float, default=30, help="seconds the target is down")
    parser.add_argument("--scenarios", default="steady,outage", help="steady, outage or both")
    parser.add_argument("--expired", type=int, default=60, help="share of grants that expire")
    parser.add_argument("--revoked", type=int, default=20, help="share revoked by a person")
    parser.add_argument("--completed", type=int, default=20, help="share completed by the agent")
    parser.add_argument(
        "--sweep-seconds", type=int, default=10, help="CUSTODY_SWEEP_SECONDS (beat's sweeps)"
    )
    parser.add_argument("--poll-ms", type=int, default=50, help="pg_roles and login poll period")
    parser.add_argument("--sample", type=int, default=30, help="credentials probed by login")
    parser.add_argument("--issuers", type=int, default=4, help="agent connections issuing")
    parser.add_argument("--concurrency", type=int, default=2, help="the worker's pool size")
    parser.add_argument(
        "--broker-sweep-seconds",
        type=int,
        default=10,
        help="CUSTODY_BROKER_SWEEP_SECONDS (beat resends due destructions)",
    )
    parser.add_argument(
        "--queues",
        default="expiry,sweeps,notifications",
        help="the worker's queues (brokers.tasks.* go to notifications, their sweep to sweeps)",
    )
    parser.add_argument(
        "--admin",
        choices=["superuser", "createrole"],
        default="superuser",
        help="the target role Custody's broker connects as",
    )
    parser.add_argument("--lead", type=float, default=10, help="least seconds before the window")
    parser.add_argument(
        "--grace", type=float, default=120, help="seconds after the window (or the outage)"
    )
    args = parser.parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenarios or not set(scenarios) <= {"steady", "outage"}:
        parser.error("--scenarios takes steady, outage or steady,outage")

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    var_dir = Path(tempfile.mkdtemp(prefix="custody-bench-broker-"))
    load_before = load_average()
    began = time.monotonic()
    started: list = []
    target = None
    try:
        target = start_target(args.admin)
        redis = RedisServer(var_dir)
        started.append(redis)
        env = environment(var_dir, redis.port, target, args)
        os.environ.update(env, LOG_LEVEL="WARNING")  # this process: the table, not its logs
        reset_database(env)
        import django

        django.setup()
        logging.getLogger("httpx").setLevel(logging.WARNING)
        from bench.api_bench import SvidSigner

        signer = SvidSigner()
        seed_custody(signer)
        gunicorn, custody_url = start_gunicorn(env, var_dir)
        started.append(gunicorn)
        worker = start_worker(env, var_dir, args)
        started.append(worker)
        version = target.cluster.execute("SHOW server_version")[0][0]
        print(f"target PostgreSQL {version} on port {target.cluster.port}; Custody {custody_url}")
        results = []
        for name in scenarios:
            print(f"scenario {name}: {args.grants} grants ending within {args.window:.0f} s")
            results.append(run_scenario(name, args, target, custody_url, signer, worker))
        config = {
            "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
            "grants": f"{args.grants} per scenario, ends spread over {args.window:.0f} s "
            f"(expired {args.expired} : revoked {args.revoked} : completed {args.completed})",
            "web": "gunicorn config.wsgi, 2 gthread workers x 4 threads",
            "worker": " ".join(worker_command(args)[1:]),
            "sweep intervals": f"CUSTODY_BROKER_SWEEP_SECONDS={args.broker_sweep_seconds} "
            f"(pending destructions), CUSTODY_SWEEP_SECONDS={args.sweep_seconds} (expiry); "
            f"destroy back-off 1, 2, 4 ... s up to {max_backoff()} s",
            "target": f"own PostgreSQL {version} cluster, fsync off, broker connects as "
            f"{'its superuser' if args.admin == 'superuser' else ADMIN_ROLE + ' (CREATEROLE)'}; "
            f"Custody's own database on 127.0.0.1:5432",
            "probes": f"pg_roles every {args.poll_ms} ms; login (and open session) every "
            f"{args.poll_ms} ms for {args.sample} credentials",
            "load average": f"{load_before} before, {load_average()} after "
            f"({os.cpu_count()} cores)",
            "ran": f"{time.monotonic() - began:.0f} s, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        }
        report(results, args, config)
        print(f"\nlogs in {var_dir}")
    finally:
        for service in reversed(started):
            if isinstance(service, RedisServer):
                stop_group(service.process)
            else:
                service.stop()
        if target is not None:
            target.cluster.remove()


if __name__ == "__main__":
    main()
