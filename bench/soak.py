#!/usr/bin/env python
"""Soak with faults: Custody in its production shape under steady traffic while the broker, the
cache and the database restart and workers are killed. Does time stop? Does anyone see a 500?

    .venv/bin/python bench/soak.py [--minutes 5] [--rate 20] [--sweep-seconds 10]

What runs (all on 127.0.0.1, started and stopped by this script):
- its own PostgreSQL database `custody_soak` (dropped, created and migrated on every run) on the
  machine's PostgreSQL, and its own two redis-servers on free ports: the Celery broker (with an
  append-only file, as docker-compose.yml runs it) and the cache;
- gunicorn (2 workers, 8 threads each), and the Celery processes of the Procfile and
  docker-compose.yml: an `expiry` worker (ETA tasks), a `sweeps` worker, a `notifications`
  worker (which consumes the sweeps too) and `beat`. Like `restart: unless-stopped`, this script
  starts again any of them that exits, and tells apart the ones it killed from the ones that
  died on their own.

Traffic, at a bounded rate (default 20 requests/s) for a bounded time (default 5 minutes), from
threads that pace themselves on one schedule:
- agents (a dozen SPIFFE agents with fresh JWT-SVIDs, and one CI agent whose OIDC issuer's keys
  Custody fetches by URL): short auto-approved grants (20-60 s, so hundreds expire during the
  run), requests that need a person, long polls on them, grant listings, token refreshes, and
  a few forged tokens (a refused login must be a 401 and audited);
- people: two sponsors logged in through the login page, approving what waits in their inbox
  through the API and opening the inbox page;
- a resource server: introspection of recent tokens and the JWKS document.

Faults, at fixed fractions of the run:
- 15%  broker restart: the broker's redis-server is stopped (SIGTERM, so its append-only file is
       kept) and started again 10 s later;
- 35%  cache outage: the cache's redis-server is stopped for 20 s (started empty);
- 55%  database restart: every connection to the soak database is terminated
       (`pg_terminate_backend`) and new ones are refused (`ALTER DATABASE ... ALLOW_CONNECTIONS
       false`) for `--db-down-seconds` (default 0.5), then allowed again. That is what a
       PostgreSQL restart looks like to its clients; the machine's shared PostgreSQL itself is
       never restarted;
- 75%  worker kills: the expiry worker is SIGKILLed (and started again 2 s later), then 10 s
       later the sweeps worker.

Figures printed at the end: requests by kind and status; 5xx outside the database restart's
first second (target 0); grants that stayed live longer than one sweep interval past their
expiry (target 0), with the lateness of expiry (revoked_at - expires_at) p50/p99/max; processes
that exited without being killed (target 0); and whether the audit chain still verifies.
"""

from __future__ import annotations

import argparse
import contextlib
import http.cookiejar
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
DB_NAME = "custody_soak"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_SOAK_DSN = f"postgresql://postgres@127.0.0.1:5432/{DB_NAME}"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
TRUST_DOMAIN = "soak.custody.internal"
OIDC_ISSUER = "https://ci.soak.example"
OIDC_SUBJECT = "repo:acme/payments:ref:main"
AGENTS = 12
PEOPLE = ("alice", "bob")
PASSWORD = "soak-" + secrets.token_urlsafe(12)
INTENT = {
    "action": "reconcile invoices",
    "target": "invoices 2026-11",
    "justification": "Nightly reconciliation of unmatched invoices.",
}
_children: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(5)


# --- Redis and the processes ----------------------------------------------------------------------


class RedisServer:
    def __init__(self, name: str, *, appendonly: bool, log_dir: Path):
        self.name, self.appendonly = name, appendonly
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"soak-{name}-")
        self.log_path = log_dir / f"redis-{name}.log"
        self.process: subprocess.Popen | None = None

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "yes" if self.appendonly else "no", "--dir", self.dir]
        command += ["--logfile", str(self.log_path)]
        self.process = subprocess.Popen(command, start_new_session=True)
        _children.append(self.process)
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
        raise RuntimeError(f"redis-server {self.name} did not start; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Supervised:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    killed_on_purpose: bool = False
    kills: int = 0
    unexpected_exits: list[str] = field(default_factory=list)


class Supervisor(threading.Thread):
    """Starts the processes and starts again any that exits (`restart: unless-stopped`)."""

    RESTART_DELAY = 2.0

    def __init__(self, *, env: dict, log_dir: Path):
        super().__init__(daemon=True)
        self.env, self.log_dir = env, log_dir
        self.processes: dict[str, Supervised] = {}
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def add(self, name: str, command: list[str]) -> None:
        self.processes[name] = Supervised(name, command)
        self._start(self.processes[name])

    def _start(self, supervised: Supervised) -> None:
        log = (self.log_dir / f"{supervised.name}.log").open("ab")
        supervised.process = subprocess.Popen(
            supervised.command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _children.append(supervised.process)
        supervised.killed_on_purpose = False

    def kill(self, name: str) -> None:
        with self.lock:
            supervised = self.processes[name]
            supervised.killed_on_purpose = True
            supervised.kills += 1
            _signal_group(supervised.process, signal.SIGKILL)

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            with self.lock:
                for supervised in self.processes.values():
                    code = supervised.process.poll()
                    if code is None:
                        continue
                    if not supervised.killed_on_purpose:
                        moment = time.strftime("%H:%M:%S")
                        supervised.unexpected_exits.append(f"{moment} exit {code}")
                    time.sleep(self.RESTART_DELAY)
                    if not self.stopping.is_set():
                        self._start(supervised)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        for supervised in self.processes.values():
            if supervised.process is not None:
                _stop(supervised.process)


def wait_for_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):  # noqa: S310
            return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def wait_for_log(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{path.name} never said {text!r}; see {path}")


# --- identities and seeding ---------------------------------------------------------------------


class Signer:
    """A key that signs workload tokens: the soak's SPIFFE trust domain, or its OIDC issuer."""

    def __init__(self):
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec

        from agents.jwks import jwk_thumbprint

        self._jwt = jwt
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": jwk_thumbprint(jwk), "alg": "ES256", "use": "sig"}
        self.lock = threading.Lock()

    @property
    def jwks(self) -> dict:
        return {"keys": [self.jwk]}

    def mint(self, sub: str, *, iss: str | None = None, ttl: int = 300) -> str:
        now = int(time.time())
        claims = {"sub": sub, "aud": ["custody"], "iat": now, "exp": now + ttl}
        claims["jti"] = secrets.token_hex(16)
        if iss:
            claims["iss"] = iss
        with self.lock:
            return self._jwt.encode(
                claims, self.private_key, algorithm="ES256", headers={"kid": self.jwk["kid"]}
            )


def self_signed_tls(folder: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) for 127.0.0.1, its own CA: Custody fetches a JWKS over https only
    (outside DEBUG) and is told to trust this certificate through CUSTODY_JWKS_CA_FILE."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "jwks-cert.pem", folder / "jwks-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class JwksServer:
    """The OIDC issuer's JWKS endpoint over https, which Custody fetches (and caches)."""

    def __init__(self, document: dict, tls: tuple[Path, Path]):
        body = json.dumps(document).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_port}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def reset_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def seed(spiffe: Signer, oidc: Signer, jwks_url: str) -> list[str]:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connections

    from agents.models import Agent, SponsorProfile, TrustDomain
    from agents.services import agent_register, trust_domain_save
    from approvals.models import Privilege
    from approvals.services import privilege_save
    from approvals.tokens import signing_key_create
    from audit.services import Actor

    actor = Actor.system("soak")
    trust_domain_save(
        domain=TrustDomain(name=TRUST_DOMAIN, kind=TrustDomain.Kind.SPIFFE, jwks=spiffe.jwks),
        actor=actor,
        created=True,
    )
    ci = TrustDomain(name="ci-oidc", kind=TrustDomain.Kind.OIDC, issuer=OIDC_ISSUER)
    ci.jwks, ci.jwks_url = None, jwks_url
    trust_domain_save(domain=ci, actor=actor, created=True)
    team = Group.objects.create(name="payments-platform")
    sponsors = []
    for username in PEOPLE:
        person = get_user_model().objects.create_user(
            username=username, email=f"{username}@example.com", password=PASSWORD
        )
        person.groups.add(team)
        SponsorProfile.objects.create(user=person)
        sponsors.append(person)
    spiffe_ids = [f"spiffe://{TRUST_DOMAIN}/agents/bot-{n}" for n in range(AGENTS)]
    for n, spiffe_id in enumerate(spiffe_ids):
        agent_register(
            spiffe_id=spiffe_id,
            name=f"Bot {n}",
            sponsor=sponsors[n % len(sponsors)],
            team=team,
            actor=actor,
        )
    agent_register(
        spiffe_id=f"spiffe://{TRUST_DOMAIN}/agents/ci-bot",
        name="CI bot",
        sponsor=sponsors[0],
        team=team,
        actor=actor,
        oidc_trust_domain=ci,
        oidc_subject=OIDC_SUBJECT,
    )
    agent_register(
        spiffe_id=f"spiffe://{TRUST_DOMAIN}/resource-servers/payments-db",
        name="payments-db gateway",
        sponsor=sponsors[0],
        team=team,
        actor=actor,
        kind=Agent.Kind.RESOURCE_SERVER,
        introspection_audiences=["payments-db"],
    )
    for resource, action, risk in (
        ("payments-db", "read", "low"),
        ("payments-api", "refund", "medium"),
    ):
        privilege_save(
            privilege=Privilege(
                resource=resource, action=action, risk=risk, max_duration_seconds=3600
            ),
            actor=actor,
            created=True,
        )
    signing_key_create()
    connections.close_all()
    return spiffe_ids


# --- traffic ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    at: float  # seconds since the start of traffic
    kind: str
    status: int  # 0: no HTTP answer at all
    content_type: str = ""
    api: bool = True  # under /api/, where every error must be the JSON envelope


class Recorder:
    def __init__(self):
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def add(self, kind: str, status: int, content_type: str = "", *, api: bool = True) -> None:
        with self.lock:
            self.outcomes.append(
                Outcome(time.monotonic() - self.started, kind, status, content_type, api)
            )


class Http:
    """One client (agent, person or resource server): urllib, with cookies for people."""

    def __init__(self, base: str, recorder: Recorder, *, cookies: bool = False):
        self.base, self.recorder = base, recorder
        handlers = []
        if cookies:
            self.jar = http.cookiejar.CookieJar()
            handlers.append(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener = urllib.request.build_opener(*handlers)

    def call(self, kind, method, path, *, body=None, token=None, form=None, headers=None):
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=headers
        )
        try:
            with self.opener.open(request, timeout=45) as response:
                status, raw = response.status, response.read()
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
            content_type = error.headers.get("Content-Type", "")
        except OSError:
            self.recorder.add(kind, 0)
            return 0, None
        self.recorder.add(kind, status, content_type, api=path.startswith("/api/"))
        try:
            return status, json.loads(raw) if "json" in content_type else raw.decode(
                errors="replace"
            )
        except ValueError:
            return status, None


class Traffic:
    def __init__(self, *, base, recorder, spiffe, oidc, spiffe_ids, rate, seconds):
        self.base, self.recorder = base, recorder
        self.spiffe, self.oidc, self.spiffe_ids = spiffe, oidc, spiffe_ids
        self.rate, self.seconds = rate, seconds
        self.server_id = f"spiffe://{TRUST_DOMAIN}/resource-servers/payments-db"
        self.tokens: list[str] = []  # recent access tokens, for the resource server
        self.pending: list[tuple[str, int]] = []  # (agent, request id) waiting for a person
        self.grants: list[tuple[str, int]] = []  # (agent, grant id) recently issued
        self.lock = threading.Lock()
        self.people = {username: Http(base, recorder, cookies=True) for username in PEOPLE}
        self.task = 0
        self.slots = threading.Semaphore(0)
        self.done = threading.Event()

    # one step of each kind; each does one HTTP request
    def _svid(self, agent: str) -> str:
        if agent == "ci-bot":
            return self.oidc.mint(OIDC_SUBJECT, iss=OIDC_ISSUER)
        return self.spiffe.mint(agent)

    def _next_task(self) -> str:
        with self.lock:
            self.task += 1
            return f"soak-{self.task}"

    def agent_grant(self, client: Http) -> None:
        agent = random.choice([*self.spiffe_ids, "ci-bot"])
        body = {
            "privilege": "payments-db:read",
            "task_id": self._next_task(),
            "duration_seconds": random.randint(20, 60),
            "intent": INTENT,
        }
        status, answer = client.call(
            "agent: submit (auto)", "POST", "/api/v1/requests", body=body, token=self._svid(agent)
        )
        if status == 201 and isinstance(answer, dict) and answer.get("grant"):
            with self.lock:
                self.tokens = [*self.tokens[-50:], answer["grant"]["access_token"]]
                self.grants = [*self.grants[-50:], (agent, answer["grant"]["id"])]
        elif status == 201 and isinstance(answer, dict) and answer.get("status") == "pending":
            with self.lock:
                self.pending = [*self.pending[-50:], (agent, answer["id"])]

    def agent_ask_a_person(self, client: Http) -> None:
        agent = random.choice(self.spiffe_ids)
        body = {
            "privilege": "payments-api:refund",
            "task_id": self._next_task(),
            "duration_seconds": random.randint(20, 60),
            "intent": INTENT,
        }
        status, answer = client.call(
            "agent: submit (person)", "POST", "/api/v1/requests", body=body, token=self._svid(agent)
        )
        if status == 201 and isinstance(answer, dict):
            with self.lock:
                self.pending = [*self.pending[-50:], (agent, answer["id"])]

    def agent_long_poll(self, client: Http) -> None:
        with self.lock:
            chosen = random.choice(self.pending) if self.pending else None
        if chosen is None:
            return self.agent_list(client)
        agent, request_id = chosen
        status, answer = client.call(
            "agent: long poll",
            "GET",
            f"/api/v1/requests/{request_id}?wait=5",
            token=self._svid(agent),
        )
        if status == 200 and isinstance(answer, dict) and answer.get("grant"):
            # Polling only reads: the token comes from the grant's token endpoint.
            status, minted = client.call(
                "agent: token", "POST", answer["grant"]["token_url"], token=self._svid(agent)
            )
            if status != 200 or not isinstance(minted, dict):
                return
            with self.lock:
                self.tokens = [*self.tokens[-50:], minted["access_token"]]
                self.grants = [*self.grants[-50:], (agent, answer["grant"]["id"])]

    def agent_list(self, client: Http) -> None:
        agent = random.choice(self.spiffe_ids)
        client.call(
            "agent: list grants", "GET", "/api/v1/grants?active=true", token=self._svid(agent)
        )

    def agent_refresh(self, client: Http) -> None:
        with self.lock:
            chosen = random.choice(self.grants) if self.grants else None
        if chosen is None:
            return self.agent_list(client)
        agent, grant_id = chosen
        client.call(
            "agent: token refresh", "POST", f"/api/v1/grants/{grant_id}/token", body={},
            token=self._svid(agent),
        )  # fmt: skip

    def agent_forged(self, client: Http) -> None:
        forged = Signer().mint(random.choice(self.spiffe_ids))  # a key nobody registered
        client.call("agent: forged token", "GET", "/api/v1/grants", token=forged)

    def person_login(self, username: str) -> None:
        client = self.people[username]
        client.call("person: login", "GET", "/login/")
        csrf = next((c.value for c in client.jar if c.name == "csrftoken"), "")
        client.call(
            "person: login",
            "POST",
            "/login/",
            form={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": csrf},
            headers={"Referer": self.base + "/login/"},
        )

    def person_approve(self, _client: Http) -> None:
        username = random.choice(PEOPLE)
        client = self.people[username]
        status, answer = client.call("person: inbox (API)", "GET", "/api/v1/approvals/pending")
        if status != 200 or not isinstance(answer, dict) or not answer.get("results"):
            return
        chosen = random.choice(answer["results"])
        csrf = next((c.value for c in client.jar if c.name == "csrftoken"), "")
        client.call(
            "person: approve",
            "POST",
            f"/api/v1/requests/{chosen['id']}/decisions",
            body={"verdict": "approve", "comment": "soak"},
            headers={"X-CSRFToken": csrf, "Referer": self.base + "/inbox/"},
        )

    def person_inbox_page(self, _client: Http) -> None:
        self.people[random.choice(PEOPLE)].call("person: inbox page", "GET", "/inbox/")

    def server_introspect(self, client: Http) -> None:
        with self.lock:
            token = random.choice(self.tokens) if self.tokens else "not-a-token"
        client.call(
            "resource server: introspect",
            "POST",
            "/api/v1/introspect",
            body={"token": token},
            token=self.spiffe.mint(self.server_id),
        )

    def server_jwks(self, client: Http) -> None:
        client.call("resource server: JWKS", "GET", "/.well-known/jwks.json")

    STEPS = (
        ("agent_grant", 30),
        ("agent_ask_a_person", 6),
        ("agent_long_poll", 6),
        ("agent_list", 8),
        ("agent_refresh", 8),
        ("agent_forged", 2),
        ("person_approve", 10),
        ("person_inbox_page", 4),
        ("server_introspect", 20),
        ("server_jwks", 6),
    )

    def _worker(self) -> None:
        client = Http(self.base, self.recorder)
        names, weights = zip(*self.STEPS, strict=True)
        while True:
            self.slots.acquire()
            if self.done.is_set():
                return
            getattr(self, random.choices(names, weights)[0])(client)

    def run(self, threads: int = 24) -> None:
        for username in PEOPLE:
            self.person_login(username)
        workers = [threading.Thread(target=self._worker, daemon=True) for _ in range(threads)]
        for worker in workers:
            worker.start()
        start = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - start) < self.seconds:
            due = int(elapsed * self.rate) + 1
            while sent < due:  # one schedule for every thread: the rate is bounded
                self.slots.release()
                sent += 1
            time.sleep(0.01)
        self.done.set()
        for _ in workers:
            self.slots.release()
        for worker in workers:
            worker.join(50)


# --- faults -------------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    at: float
    until: float = 0.0
    note: str = ""


def database_restart(down_seconds: float, fault: Fault, clock) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        fault.at = clock()  # from here on, clients see the restart
        admin.execute(f"ALTER DATABASE {DB_NAME} ALLOW_CONNECTIONS false")
        killed = admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [DB_NAME],
        ).fetchone()[0]
        try:
            time.sleep(down_seconds)
        finally:
            admin.execute(f"ALTER DATABASE {DB_NAME} ALLOW_CONNECTIONS true")
    return f"{killed} connections terminated, new ones refused for {down_seconds:g} s"


class Faults(threading.Thread):
    def __init__(self, *, seconds, broker, cache, supervisor, recorder, db_down_seconds):
        super().__init__(daemon=True)
        self.seconds, self.broker, self.cache = seconds, broker, cache
        self.supervisor, self.recorder = supervisor, recorder
        self.db_down_seconds = db_down_seconds
        self.log: list[Fault] = []

    def _at(self, fraction: float) -> None:
        target = self.recorder.started + self.seconds * fraction
        time.sleep(max(0.0, target - time.monotonic()))

    def _now(self) -> float:
        return time.monotonic() - self.recorder.started

    def run(self) -> None:
        self._at(0.15)
        fault = Fault("broker restart", self._now())
        self.broker.stop()
        time.sleep(10)
        self.broker.start()
        fault.until, fault.note = self._now(), "redis-server stopped 10 s (append-only file kept)"
        self.log.append(fault)

        self._at(0.35)
        fault = Fault("cache outage", self._now())
        self.cache.stop()
        time.sleep(20)
        self.cache.start()
        fault.until, fault.note = self._now(), "redis-server stopped 20 s (started empty)"
        self.log.append(fault)

        self._at(0.55)
        fault = Fault("database restart", self._now())
        fault.note = database_restart(self.db_down_seconds, fault, self._now)
        fault.until = self._now()
        self.log.append(fault)

        self._at(0.75)
        fault = Fault("expiry worker killed", self._now(), note="SIGKILL; restarted after 2 s")
        self.supervisor.kill("expiry")
        fault.until = self._now()
        self.log.append(fault)
        time.sleep(10)
        fault = Fault("sweeps worker killed", self._now(), note="SIGKILL; restarted after 2 s")
        self.supervisor.kill("sweeps")
        fault.until = self._now()
        self.log.append(fault)


# --- figures ------------------------------------------------------------------------------------


def expiry_figures(sweep_seconds: int) -> dict:
    import psycopg

    with psycopg.connect(PG_SOAK_DSN) as conn:
        ended = conn.execute(
            "SELECT extract(epoch FROM revoked_at - expires_at) FROM approvals_grant "
            "WHERE revoke_reason = 'expired'"
        ).fetchall()
        live_late = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE expires_at < now() - make_interval("
            "secs => %s)), coalesce(max(extract(epoch FROM now() - expires_at)), 0) "
            "FROM approvals_grant WHERE revoked_at IS NULL AND expires_at < now()",
            [sweep_seconds],
        ).fetchone()
        issued = conn.execute("SELECT count(*) FROM approvals_grant").fetchone()[0]
    lateness = sorted(float(row[0]) for row in ended)
    late = [value for value in lateness if value > sweep_seconds]
    still_live, still_live_late, oldest = live_late
    return {
        "issued": issued,
        "expired": len(lateness),
        "p50": statistics.median(lateness) if lateness else 0.0,
        "p99": lateness[int(len(lateness) * 0.99)] if lateness else 0.0,
        "max": lateness[-1] if lateness else 0.0,
        "late": len(late) + still_live_late,
        "still_live_past_expiry": still_live,
        "oldest_still_live": float(oldest),
    }


def verify_audit(env: dict) -> tuple[bool, str]:
    """`manage.py verify_audit`: whether it passed, and the first line it printed."""
    result = subprocess.run(
        [PYTHON, "manage.py", "verify_audit"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    lines = (result.stdout or result.stderr).strip().splitlines() or ["(no output)"]
    return result.returncode == 0, lines[0]


def server_log_causes(log_dir: Path) -> Counter:
    """Why the API answered 503, as gunicorn's log says (clients only see the JSON envelope)."""
    causes: Counter = Counter()
    log = log_dir / "gunicorn.log"
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if "API request failed on the database: " in line:
            cause = line.split("API request failed on the database: ", 1)[1]
            causes[
                re.sub(r"[^a-zA-Z ]+", " ", cause.split(":")[0].split("\\n")[0])[:60].strip()
            ] += 1
    return causes


def print_report(*, args, recorder, faults, supervisor, expiry, audit, command, causes) -> int:
    outcomes = recorder.outcomes
    db = next((f for f in faults.log if f.name == "database restart"), None)

    def in_db_first_second(outcome: Outcome) -> bool:
        return db is not None and db.at <= outcome.at <= db.at + 1.0

    def fault_at(moment: float) -> str:
        """The latest fault that started before this moment, and how long after it."""
        started = [fault for fault in faults.log if fault.at <= moment]
        if not started:
            return "before any fault"
        return f"{started[-1].name} +{int(moment - started[-1].at)} s"

    server_errors = [o for o in outcomes if o.status >= 500]
    outside = [o for o in server_errors if not in_db_first_second(o)]
    html_errors = [o for o in server_errors if o.api and "json" not in o.content_type]
    no_answer = [o for o in outcomes if o.status == 0]
    print()
    print(f"Soak: {command}")
    print(
        f"{args.minutes:g} min at {args.rate:g} req/s; gunicorn 2 workers x 8 threads, workers "
        f"expiry / sweeps / notifications+sweeps, beat; sweep every {args.sweep_seconds} s; "
        "PostgreSQL; Redis broker (AOF) and Redis cache"
    )
    print()
    print(f"{'fault':<24} {'at (s)':>8} {'until (s)':>10}  what")
    for fault in faults.log:
        print(f"{fault.name:<24} {fault.at:>8.1f} {fault.until:>10.1f}  {fault.note}")
    print()
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for outcome in outcomes:
        by_kind[outcome.kind][outcome.status] += 1
    print(f"{'requests':<30} {'total':>6}  statuses")
    for kind in sorted(by_kind):
        counts = by_kind[kind]
        statuses = ", ".join(
            f"{status or 'no answer'}: {n}" for status, n in sorted(counts.items())
        )
        print(f"{kind:<30} {sum(counts.values()):>6}  {statuses}")
    print()
    per_fault = Counter(fault_at(o.at) for o in outside)
    rows = [
        ("requests sent", len(outcomes), ""),
        ("5xx in all", len(server_errors), ""),
        ("5xx in the database restart's first second", len(server_errors) - len(outside), ""),
        ("5xx outside it", len(outside), "target 0"),
        ("5xx under /api/ that were not JSON", len(html_errors), "target 0"),
        ("requests with no HTTP answer", len(no_answer), "target 0"),
        ("grants issued", expiry["issued"], ""),
        ("grants ended by expiry", expiry["expired"], ""),
        ("expiry lateness p50 / p99 / max (s)",
         f"{expiry['p50']:.2f} / {expiry['p99']:.2f} / {expiry['max']:.2f}", ""),
        (f"grants live > {args.sweep_seconds} s (one sweep interval) past expiry",
         expiry["late"], "target 0"),
        ("grants still live past expiry at the end", expiry["still_live_past_expiry"], ""),
    ]  # fmt: skip
    unexpected = 0
    for supervised in supervisor.processes.values():
        unexpected += len(supervised.unexpected_exits)
        detail = "; ".join(supervised.unexpected_exits)
        rows.append((f"{supervised.name}: killed / died on its own", f"{supervised.kills} / "
                     f"{len(supervised.unexpected_exits)}", detail))  # fmt: skip
    audit_ok, audit_line = audit
    rows.append(("verify_audit", "passed" if audit_ok else "FAILED", audit_line))
    width = max(len(str(label)) for label, _, _ in rows)
    for label, value, note in rows:
        print(f"{label:<{width}}  {value!s:>12}  {note}")
    if per_fault:
        print()
        print("5xx outside the database restart's first second, by fault window:", dict(per_fault))
        for outcome in outside[:20]:
            print(
                f"  {outcome.at:8.2f} s  {outcome.status}  {outcome.kind}  ({fault_at(outcome.at)})"
            )
    if causes:
        print()
        print("503s by cause (gunicorn's log):", dict(causes))
    ok = not outside and not html_errors and not no_answer and expiry["late"] == 0
    ok = ok and unexpected == 0 and audit_ok
    print()
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


# --- main ---------------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5, help="traffic duration (default 5)")
    parser.add_argument("--rate", type=float, default=20, help="requests per second (default 20)")
    parser.add_argument("--sweep-seconds", type=int, default=10, help="CUSTODY_SWEEP_SECONDS")
    parser.add_argument("--db-down-seconds", type=float, default=0.5)
    parser.add_argument("--keep-logs", action="store_true", help="print where the logs are")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not 0 < args.minutes <= 60 or not 0 < args.rate <= 200:
        sys.exit("--minutes must be in (0, 60] and --rate in (0, 200]")
    command = "bench/soak.py " + " ".join(sys.argv[1:])
    log_dir = Path(tempfile.mkdtemp(prefix="custody-soak-"))
    broker = RedisServer("broker", appendonly=True, log_dir=log_dir)
    cache = RedisServer("cache", appendonly=False, log_dir=log_dir)
    broker.start()
    cache.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CELERY_"))}
    jwks_tls = self_signed_tls(log_dir)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1",
        DATABASE_URL=DATABASE_URL,
        CELERY_BROKER_URL=broker.url(0),
        CACHE_URL=cache.url(0),
        CUSTODY_VAR_DIR=str(log_dir / "var"),
        CUSTODY_SWEEP_SECONDS=str(args.sweep_seconds),
        CUSTODY_JWKS_CA_FILE=str(jwks_tls[0]),
        # Its agents leave many requests waiting for people: flood control would refuse them.
        CUSTODY_MAX_PENDING_PER_AGENT="1000000",
        LOG_LEVEL="WARNING",
        # Plain HTTP on loopback (production terminates TLS in front): cookies without Secure.
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    os.environ.update(env)
    supervisor = Supervisor(env=env, log_dir=log_dir)
    try:
        print(f"soak: logs in {log_dir}", flush=True)
        reset_database()
        subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                       env=env, check=True)  # fmt: skip
        import django

        django.setup()
        spiffe, oidc = Signer(), Signer()
        jwks_server = JwksServer(oidc.jwks, jwks_tls)
        spiffe_ids = seed(spiffe, oidc, jwks_server.url)
        from bench.seeding import make_every_agent_eligible

        make_every_agent_eligible()

        port = free_port()
        bin_dir = Path(PYTHON).parent
        celery = [str(bin_dir / "celery"), "-A", "config"]
        supervisor.add("gunicorn", [
            str(bin_dir / "gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--threads", "8", "--timeout", "60", "--graceful-timeout", "5",
            "--log-level", "warning", "--worker-tmp-dir", "/dev/shm",
        ])  # fmt: skip
        for name, queues in (("expiry", "expiry"), ("sweeps", "sweeps"),
                             ("notifications", "notifications,sweeps")):  # fmt: skip
            supervisor.add(name, [
                *celery, "worker", "--loglevel=INFO", "--pool=solo", f"--queues={queues}",
                f"--hostname={name}-soak@%h", "--without-gossip", "--without-mingle",
            ])  # fmt: skip
        supervisor.add("beat", [*celery, "beat", "--loglevel=INFO"])
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/.well-known/jwks.json")
        for name in ("expiry", "sweeps", "notifications"):
            wait_for_log(log_dir / f"{name}.log", " ready.")
        supervisor.start()

        seconds = args.minutes * 60
        recorder = Recorder()
        traffic = Traffic(
            base=base, recorder=recorder, spiffe=spiffe, oidc=oidc, spiffe_ids=spiffe_ids,
            rate=args.rate, seconds=seconds,
        )  # fmt: skip
        faults = Faults(
            seconds=seconds, broker=broker, cache=cache, supervisor=supervisor,
            recorder=recorder, db_down_seconds=args.db_down_seconds,
        )  # fmt: skip
        print(f"soak: {args.minutes:g} min of traffic at {args.rate:g} req/s on {base}", flush=True)
        faults.start()
        traffic.run()
        faults.join(60)
        # Every grant issued has expired by now + 60 s; give the last ones one sweep interval.
        time.sleep(60 + args.sweep_seconds + 2)
        expiry = expiry_figures(args.sweep_seconds)
        audit = verify_audit(env)
        return print_report(
            args=args, recorder=recorder, faults=faults, supervisor=supervisor, expiry=expiry,
            audit=audit, command=command, causes=server_log_causes(log_dir),
        )  # fmt: skip
    finally:
        supervisor.stop()
        for redis_server in (broker, cache):
            redis_server.remove()
        for child in _children:
            _stop(child, grace=5)
        if not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
