#!/usr/bin/env python
"""Concurrency sweep: throughput and latency curves of Custody's hot paths, and the chain head.

    .venv/bin/python bench/sweep.py [--steps 1,2,4,8,16,32] [--seconds 5] [--warmup 2]
        [--worker-classes sync,gthread] [--threads 4] [--database custody_bench_sweep]
        [--broker-db 10] [--cache-db 11] [--chain-seconds 3] [--plots docs]
    .venv/bin/python bench/sweep.py --plot-only docs/sweep-results.json

What it does, in order:
1. Creates its database afresh and seeds it exactly as `bench/api_bench.py` does (it reuses
   that module's start-up, seeding, gunicorn and wrk functions, pointed at its own database and
   Redis DBs so it never meets another benchmark).
2. For each worker class (gunicorn, 2 workers; sync, then gthread with `--threads` threads),
   drives four endpoints with wrk at 1, 2, 4, 8, 16, 32 connections:
   (a) POST /api/v1/requests, auto-approved (2 audit events per request);
   (b) POST /api/v1/introspect (no audit event);
   (c) POST /bench/floor: the same authentication plus one INSERT;
   (d) POST /bench/floor-audit: the floor plus one audit event (`audit.services.record`) in
       the same transaction, so d against c is the chain head's own cost as writers grow.
   Each step is `--seconds` long; at every step the order of a b c d rotates so the machine's
   other load weighs on all four alike. While each step runs, pg_stat_activity is sampled
   (20 Hz) for backends waiting on a lock, and on the chain head's row in particular (their
   statement is the head's UPDATE).
3. The chain head alone, without HTTP or gunicorn: N threads (1 ... 32 sessions) in this process
   each loop over a transaction that appends one event through `audit.services.record`
   (the head lock, the insert, the head update, COMMIT), against the same threads each
   committing one plain INSERT: appends per second and the share of sessions waiting on the head.
4. Prints the tables, writes the figures to `<plots>/sweep-results.json` and draws
   `<plots>/sweep-throughput.png`, `<plots>/sweep-p99.png` and `<plots>/sweep-chain-head.png`
   (matplotlib, Agg backend). `--plot-only RESULTS [--compare BASELINE]` redraws from saved
   results, the chain plot with a baseline run's record() curve beside this one's.

Everything it starts is stopped on exit, error or signal; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import api_bench as ab  # noqa: E402

# A backend waiting on a lock while running one of these waits on the chain head's row: the
# head's UPDATE (the append from Python) or audit_append() (migration 0007), whose only lock
# wait is the head.
HEAD_MARKERS = ("audit_auditchainhead", "audit_append(", "bench_chain_append(")
ENDPOINTS = {
    "a": ("(a) submit, auto-approved", ab.A_PATH, "agent"),
    "b": ("(b) introspect", ab.B_PATH, "server"),
    "c": ("(c) floor: auth + 1 INSERT", ab.C_PATH, "agent"),
    "d": ("(d) floor + 1 audit event", "/bench/floor-audit", "agent"),
}
COUNT_SQL = {
    "a": "SELECT count(*) FROM approvals_accessrequest WHERE status = 'approved'",
    "c": "SELECT count(*) FROM bench_floor",
    "d": "SELECT count(*) FROM audit_auditevent WHERE verb = 'tool.called'",
}


def point_api_bench_at(database: str, broker_db: int, cache_db: int) -> None:
    """api_bench's functions read its module constants when they run: aim them at our stores."""
    ab.DB_NAME = database
    ab.PG_BENCH_DSN = f"postgresql://postgres@127.0.0.1:5432/{database}"
    ab.DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{database}"
    ab.BROKER_URL = f"redis://127.0.0.1:6379/{broker_db}"
    ab.CACHE_URL = f"redis://127.0.0.1:6379/{cache_db}"


# --- what backends wait on ----------------------------------------------------------------------


class LockSampler(threading.Thread):
    """Samples pg_stat_activity of the bench database at 20 Hz: active backends, those waiting on
    any heavyweight lock, and those waiting on the audit chain head's row."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        self.samples = 0
        self.active = 0
        self.lock_waits = 0
        self.head_waits = 0

    def run(self):
        import psycopg

        with psycopg.connect(ab.PG_BENCH_DSN, autocommit=True) as conn:
            while not self.stop_event.wait(0.05):
                rows = conn.execute(
                    "SELECT wait_event_type, query FROM pg_stat_activity WHERE datname = %s "
                    "AND state = 'active' AND pid <> pg_backend_pid()",
                    [ab.DB_NAME],
                ).fetchall()
                self.samples += 1
                self.active += len(rows)
                for kind, query in rows:
                    if kind == "Lock":
                        self.lock_waits += 1
                        self.head_waits += any(m in (query or "") for m in HEAD_MARKERS)

    def stop(self) -> dict[str, float]:
        self.stop_event.set()
        self.join()
        samples = max(self.samples, 1)
        return {
            "active_mean": self.active / samples,  # backends busy, on average
            "lock_wait_mean": self.lock_waits / samples,
            "head_wait_mean": self.head_waits / samples,  # backends queued on the head
            "head_wait_share": self.head_waits / self.active if self.active else 0.0,
        }


# --- HTTP sweep ---------------------------------------------------------------------------------


@dataclass
class Step:
    worker_class: str
    endpoint: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    worker_cpu_us: float  # gunicorn workers' CPU per request
    pg_cpu_us: float  # the bench database's backends' CPU per request
    machine_busy: float
    rows_written: int | None
    waits: dict[str, float] = field(default_factory=dict)


def measure_step(server, key, *, connections, seconds, tokens, access_token, work_dir) -> Step:
    label, path, who = ENDPOINTS[key]
    body = json.dumps(
        {"token": access_token}
        if key == "b"
        else ab.request_body("__TASK__")
        if key == "a"
        else {"n": 1}
    )
    sampler = LockSampler()
    sampler.start()
    try:
        run = ab.run_wrk(
            server,
            path=path,
            token=tokens[who],
            body=body,
            seconds=seconds,
            connections=connections,
            work_dir=work_dir,
            count_rows_sql=COUNT_SQL.get(key),
        )
    finally:
        waits = sampler.stop()
    requests = max(run.wrk["requests"], 1)
    quantiles = sorted(run.quantiles)
    errors = sum(run.wrk[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Step(
        worker_class=server.worker_class,
        endpoint=key,
        connections=connections,
        rps=run.wrk["requests"] / (run.wrk["duration_us"] / 1e6),
        p50_ms=run.wrk["p50_us"] / 1000,
        p99_ms=run.wrk["p99_us"] / 1000 if run.wrk["p99_us"] else quantiles[-10] / 1000,
        requests=run.wrk["requests"],
        errors=errors,
        worker_cpu_us=1e6 * run.workers_cpu / requests,
        pg_cpu_us=1e6 * run.pg_bench_cpu / requests,
        machine_busy=run.machine_busy,
        rows_written=run.rows_written,
        waits=waits,
    )


def sweep_worker_class(worker_class, *, args, env, tokens, work_dir) -> list[Step]:
    server = ab.Gunicorn(
        env=env,
        port=ab.free_port(),
        worker_class=worker_class,
        threads=args.threads,
        log_path=work_dir / f"gunicorn-{worker_class}.log",
    )
    server.start()
    steps: list[Step] = []
    try:
        base = server.base_url
        code, answer = ab.post_json(f"{base}{ab.A_PATH}", ab.request_body("pre"), tokens["agent"])
        if code != 201 or answer.get("status") != "approved":
            raise RuntimeError(f"(a) pre-flight: {code} {answer}")
        for key in ("c", "d"):
            code, answer = ab.post_json(f"{base}{ENDPOINTS[key][1]}", {"n": 1}, tokens["agent"])
            if code != 201:
                raise RuntimeError(f"({key}) pre-flight: {code} {answer}")
        keys = list(ENDPOINTS)
        print(f"[{worker_class}] warm-up {args.warmup} s each at 4 connections", flush=True)
        for key in keys:
            measure_step(
                server,
                key,
                connections=4,
                seconds=args.warmup,
                tokens=tokens,
                access_token=ab.fresh_access_token(server, tokens),
                work_dir=work_dir,
            )
        for number, connections in enumerate(args.steps):
            order = keys[number % 4 :] + keys[: number % 4]
            access_token = ab.fresh_access_token(server, tokens)
            for key in order:
                step = measure_step(
                    server,
                    key,
                    connections=connections,
                    seconds=args.seconds,
                    tokens=tokens,
                    access_token=access_token,
                    work_dir=work_dir,
                )
                steps.append(step)
                print(
                    f"[{worker_class}] c={connections:<3} {key}: {step.rps:8.1f} req/s  "
                    f"p50 {step.p50_ms:7.2f}  p99 {step.p99_ms:8.2f} ms  errors {step.errors}  "
                    f"head waiters {step.waits['head_wait_mean']:.2f}",
                    flush=True,
                )
    finally:
        server.stop()
    return steps


# --- the chain head alone -----------------------------------------------------------------------


@dataclass
class ChainStep:
    kind: str  # "insert" (one plain INSERT), "append" (record()), "append-python" (see below)
    sessions: int
    per_second: float
    waits: dict[str, float]


def chain_kinds(parallel_chains: int) -> list[str]:
    """ "append-python" is the append as it was before audit migration 0007 (three statements
    under the head lock, hashing in Python), where the code still has it as a function;
    "append-N-chains" is the design past one head, modelled in bench-only tables."""
    from audit import services

    python_path = hasattr(services, "_append_in_database")
    kinds = ["insert", "append"] + (["append-python"] if python_path else [])
    if python_path and parallel_chains > 1:
        create_parallel_chains(parallel_chains)
        kinds.append(f"append-{parallel_chains}-chains")
    return kinds


def create_parallel_chains(count: int) -> None:
    """A model of N chains appended in parallel, in bench-only tables: `count` head rows, each
    with its own genesis hash and sequence range, over a copy of the event table with every
    index of the real one, appended by audit_append's own body pointed at them. A writer picks
    a chain (here: its session number modulo `count`), so appends to different chains never
    wait on each other. Not the product: what the curve would be."""
    import hashlib
    import importlib

    from django.db import connection

    migration = importlib.import_module("audit.migrations.0007_append_function")
    body = (
        migration.POSTGRESQL_FUNCTION.replace("audit_append(", "bench_chain_append(")
        .replace("    appended_at timestamptz,", "    chain_id integer, appended_at timestamptz,")
        .replace("audit_auditchainhead", "bench_chain_head")
        .replace("audit_auditevent", "bench_chain_event")
        .replace("WHERE id = 1", "WHERE id = chain_id")
        # Since audit 0010 an event's key is its sequence (the table has no id column).
        .replace(") RETURNING id INTO event_id;", "); event_id := event_sequence;")
    )
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_chain_head, bench_chain_event")
        cursor.execute(
            "CREATE TABLE bench_chain_head (id integer PRIMARY KEY, "
            "last_sequence bigint NOT NULL, last_hash varchar(64) NOT NULL)"
        )
        cursor.execute(
            "CREATE TABLE bench_chain_event (LIKE audit_auditevent INCLUDING DEFAULTS "
            "INCLUDING CONSTRAINTS INCLUDING INDEXES INCLUDING IDENTITY)"
        )
        for chain in range(1, count + 1):
            genesis = hashlib.sha256(f"bench-chain-{chain}".encode()).hexdigest()
            cursor.execute(
                "INSERT INTO bench_chain_head VALUES (%s, %s, %s)", [chain, chain * 10**12, genesis]
            )
        cursor.execute(body)
    connection.close()


def append_to_parallel_chain(chain: int, event) -> None:
    from django.db import connection
    from django.utils import timezone

    head, tail = event.canonical_parts()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT * FROM bench_chain_append(%s, %s, %s, %s, %s, %s, %s, %s::bigint[], "
            "%s::bigint[], %s::bigint[], %s::jsonb[])",
            [
                chain,
                timezone.now(),
                [head],
                [tail],
                [event.actor_type],
                [event.actor_id],
                [event.verb],
                [event.agent_id],
                [event.access_request_id],
                [event.grant_id],
                [json.dumps(event.data)],
            ],
        )
        if len(cursor.fetchall()) != 1:
            raise RuntimeError(f"bench chain {chain} did not append")


def chain_step(kind: str, sessions: int, seconds: float) -> ChainStep:
    from django.db import connection, transaction

    from audit import services
    from audit.models import AuditEvent
    from audit.services import Actor, record

    actor = Actor.system("bench-sweep")
    counts = [0] * sessions
    start = threading.Barrier(sessions + 1)
    stop = threading.Event()
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            start.wait()
            while not stop.is_set():
                with transaction.atomic():
                    if kind == "append":
                        record(actor=actor, verb="tool.called", data={"session": index})
                    elif kind == "append-python":
                        event = AuditEvent(
                            actor_type=actor.type,
                            actor_id=actor.id,
                            verb="tool.called",
                            data={"session": index},
                        )
                        services._append_from_python([event])
                    elif kind.endswith("-chains"):
                        chains = int(kind.split("-")[1])
                        event = AuditEvent(
                            actor_type=actor.type,
                            actor_id=actor.id,
                            verb="tool.called",
                            data={"session": index},
                        )
                        append_to_parallel_chain(index % chains + 1, event)
                    else:
                        with connection.cursor() as cursor:
                            cursor.execute("INSERT INTO bench_floor (agent_id) VALUES (%s)", [0])
                counts[index] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failures.append(exc)
            stop.set()
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(sessions)]
    for thread in threads:
        thread.start()
    start.wait()
    sampler = LockSampler()
    sampler.start()
    began = time.monotonic()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    waits = sampler.stop()
    if failures:
        raise RuntimeError(f"chain step {kind} x{sessions}: {failures[0]!r}")
    return ChainStep(kind, sessions, sum(counts) / elapsed, waits)


def chain_sweep(steps: list[int], seconds: float, parallel_chains: int) -> list[ChainStep]:
    results = []
    kinds = chain_kinds(parallel_chains)
    for number, sessions in enumerate(steps):
        for kind in kinds[number % len(kinds) :] + kinds[: number % len(kinds)]:
            step = chain_step(kind, sessions, seconds)
            results.append(step)
            print(
                f"[chain] {sessions:>2} sessions {kind:<6}: {step.per_second:8.1f}/s  "
                f"head waiters {step.waits['head_wait_mean']:.2f}",
                flush=True,
            )
    return results


# --- report -------------------------------------------------------------------------------------


def print_tables(results: dict) -> None:
    steps = [Step(**s) for s in results["http"]]
    width = 118
    print("\n" + "=" * width)
    print(results["title"])
    print(results["load_note"])
    print("=" * width)
    for worker_class in results["worker_classes"] if steps else []:
        mine = [s for s in steps if s.worker_class == worker_class]
        threads = f" x {results['threads']} threads" if worker_class == "gthread" else ""
        print(f"\n2 {worker_class} workers{threads}: req/s, p50 / p99 ms per step")
        header = f"{'conns':>5}"
        for key in ENDPOINTS:
            header += f"  {ENDPOINTS[key][0][:25]:>27}"
        print(header + f"{'d/c req/s':>10}{'a/c req/s':>10}{'head q':>8}")
        for connections in results["steps"]:
            by_key = {s.endpoint: s for s in mine if s.connections == connections}
            line = f"{connections:>5}"
            for key in ENDPOINTS:
                s = by_key[key]
                cell = f"{s.rps:.0f} {s.p50_ms:.1f}/{s.p99_ms:.1f}" + ("!" if s.errors else "")
                line += f"  {cell:>27}"
            c, d, a = by_key["c"], by_key["d"], by_key["a"]
            head_q = max(by_key["a"].waits["head_wait_mean"], d.waits["head_wait_mean"])
            print(line + f"{d.rps / c.rps:>10.2f}{a.rps / c.rps:>10.2f}{head_q:>8.2f}")
        cpu = {
            key: statistics.median(s.worker_cpu_us for s in mine if s.endpoint == key)
            for key in ENDPOINTS
        }
        print(
            "  worker CPU per request (median over steps, µs): "
            + ", ".join(f"{key} {value:.0f}" for key, value in cpu.items())
        )
        errors = sum(s.errors for s in mine)
        print(
            f"  errors (non-2xx, timeouts) over all steps: {errors}"
            + ("  ('!' marks the steps)" if errors else "")
        )
    print(
        "\n  head q = mean number of backends queued on the audit chain head's row lock while"
        " (a) or (d) ran (pg_stat_activity, 20 Hz; the larger of the two)"
    )
    chain = [ChainStep(**s) for s in results.get("chain", [])]
    if chain:
        print(
            f"\nthe chain head alone: N sessions in one process, each committing one transaction "
            f"after another for {results['chain_seconds']} s (no HTTP)"
        )
        kinds = list(dict.fromkeys(s.kind for s in chain))
        print(f"{'sessions':>9}" + "".join(f"{kind + '/s':>19}{'head q':>8}" for kind in kinds))
        for sessions in sorted({s.sessions for s in chain}):
            line = f"{sessions:>9}"
            for kind in kinds:
                step = next(s for s in chain if s.sessions == sessions and s.kind == kind)
                line += f"{step.per_second:>19.0f}{step.waits['head_wait_mean']:>8.2f}"
            print(line)
        print(
            "  insert = one plain INSERT per transaction; append = record() (audit_append, one"
            " statement); append-python = the append before migration 0007 (3 statements);"
            " append-N-chains = the same statement over N head rows (a bench-only model);"
            " head q = mean sessions queued on the head's row lock"
        )
    print("=" * width)


def draw(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [Step(**s) for s in results["http"]]
    if not steps:
        return []
    colours = {"a": "tab:red", "b": "tab:blue", "c": "tab:green", "d": "tab:orange"}
    styles = {"sync": "-", "gthread": "--"}
    markers = {"sync": "o", "gthread": "s"}
    written = []
    for metric, ylabel, name in (
        ("rps", "throughput (requests/s)", "sweep-throughput.png"),
        ("p99_ms", "latency p99 (ms, log scale)", "sweep-p99.png"),
    ):
        figure, axes = plt.subplots(figsize=(9, 5.5), dpi=110)
        for worker_class in results["worker_classes"]:
            for key, (label, _, _) in ENDPOINTS.items():
                points = sorted(
                    (s.connections, getattr(s, metric))
                    for s in steps
                    if s.worker_class == worker_class and s.endpoint == key
                )
                if not points:
                    continue
                threads = f"x{results['threads']}" if worker_class == "gthread" else ""
                axes.plot(
                    [x for x, _ in points],
                    [y for _, y in points],
                    linestyle=styles.get(worker_class, "-"),
                    marker=markers.get(worker_class, "o"),
                    color=colours[key],
                    label=f"{label} — {worker_class}{threads}",
                )
        axes.set_xscale("log", base=2)
        axes.set_xticks(results["steps"], [str(s) for s in results["steps"]])
        if metric == "p99_ms":
            axes.set_yscale("log")
        else:
            axes.set_ylim(bottom=0)
        axes.set_xlabel("wrk connections")
        axes.set_ylabel(ylabel)
        title = f"Custody, gunicorn 2 workers, PostgreSQL — {results['load_note']}"
        axes.set_title(title, fontsize=8)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        path = out_dir / name
        figure.savefig(path)
        plt.close(figure)
        written.append(path)
    return written


def draw_chain(results: dict, out_dir: Path, baseline: dict | None = None) -> Path | None:
    """sweep-chain-head.png: the chain head alone, commits per second against sessions; with a
    baseline run (`--compare`), its record() curve too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chain = [ChainStep(**s) for s in results.get("chain", [])]
    if not chain:
        return None
    labels = {
        "insert": ("one plain INSERT per transaction", "tab:green", "-"),
        "append": ("record(): one event, audit_append (one statement)", "tab:red", "-"),
        "append-python": ("one event, the append before 0007 (3 statements)", "tab:purple", "--"),
    }
    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=110)
    for kind in dict.fromkeys(s.kind for s in chain):
        if kind.endswith("-chains"):
            chains = kind.split("-")[1]
            labels[kind] = (f"one event, {chains} chains in parallel (model)", "tab:blue", "-")
    for kind, (label, colour, style) in labels.items():
        points = sorted((s.sessions, s.per_second) for s in chain if s.kind == kind)
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", color=colour, ls=style, label=label)
    if baseline:
        points = sorted(
            (s["sessions"], s["per_second"]) for s in baseline["chain"] if s["kind"] == "append"
        )
        axes.plot(
            *zip(*points, strict=True),
            marker="s",
            color="tab:gray",
            ls=":",
            label=f"record() before 0007, separate run ({baseline['load_note']})",
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks(results["steps"], [str(s) for s in results["steps"]])
    axes.set_ylim(bottom=0)
    axes.set_xlabel("database sessions in one process (threads), no HTTP")
    axes.set_ylabel("committed transactions per second")
    axes.set_title(f"The audit chain head alone — {results['load_note']}", fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = out_dir / "sweep-chain-head.png"
    figure.savefig(path)
    plt.close(figure)
    return path


# --- main ---------------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="1,2,4,8,16,32", help="connection counts")
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per step")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per endpoint")
    parser.add_argument("--worker-classes", default="sync,gthread")
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--database", default="custody_bench_sweep")
    parser.add_argument("--broker-db", type=int, default=10)
    parser.add_argument("--cache-db", type=int, default=11)
    parser.add_argument(
        "--chain-seconds", type=float, default=3, help="seconds per chain-head step (0: skip)"
    )
    parser.add_argument(
        "--parallel-chains", type=int, default=4, help="chains in the N-chain model (0: skip)"
    )
    parser.add_argument("--chain-only", action="store_true", help="only the chain-head part")
    parser.add_argument("--plots", default=str(ROOT / "docs"), help="where PNGs and JSON go")
    parser.add_argument("--plot-only", help="redraw from a results JSON; run nothing")
    parser.add_argument("--compare", help="a baseline run's results JSON for the chain plot")
    args = parser.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    args.worker_classes = args.worker_classes.split(",")
    return args


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} (1 / 5 min), {os.cpu_count()} CPUs"


def main() -> int:
    args = parse_args()
    out_dir = Path(args.plots)
    if args.plot_only:
        results = json.loads(Path(args.plot_only).read_text())
        baseline = json.loads(Path(args.compare).read_text()) if args.compare else None
        print_tables(results)
        for path in [*draw(results, out_dir), draw_chain(results, out_dir, baseline)]:
            print(f"drew {path}")
        return 0
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get update && apt-get install -y wrk")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, ab._raise_on_signal)
    point_api_bench_at(args.database, args.broker_db, args.cache_db)
    work_dir = Path(tempfile.mkdtemp(prefix="custody-sweep-"))
    env = ab.bench_env(str(work_dir))
    load_before = load_note()
    started = time.monotonic()
    try:
        versions = ab.versions()
        print(f"resetting {ab.DB_NAME}, Redis DBs {args.broker_db}, {args.cache_db}; migrating")
        ab.reset_stores()
        ab.migrate(env)
        os.environ.update(env)

        import django

        django.setup()
        from django.db import connection

        from bench.seeding import make_every_agent_eligible

        signer = ab.SvidSigner()
        ab.seed(signer)
        make_every_agent_eligible()
        connection.close()
        tokens = {
            "agent": signer.mint(ab.AGENT_SPIFFE_ID),
            "server": signer.mint(ab.SERVER_SPIFFE_ID),
        }
        http: list[Step] = []
        for worker_class in [] if args.chain_only else args.worker_classes:
            http += sweep_worker_class(
                worker_class, args=args, env=env, tokens=tokens, work_dir=work_dir
            )
        chain = (
            chain_sweep(args.steps, args.chain_seconds, args.parallel_chains)
            if args.chain_seconds > 0
            else []
        )
        audit = ab.verify_audit()
        connection.close()
        results = {
            "title": (
                f"Custody concurrency sweep: gunicorn {versions['gunicorn']}, 2 workers, "
                f"PostgreSQL {versions['postgres']} ({ab.DB_NAME}), {versions['wrk']} -t1, "
                f"{args.seconds} s per step, endpoints interleaved per step; audit log after: "
                f"{audit}; run took {time.monotonic() - started:.0f} s"
            ),
            "load_note": f"{load_before} before, {load_note()} after",
            "steps": args.steps,
            "worker_classes": args.worker_classes,
            "threads": args.threads,
            "seconds": args.seconds,
            "chain_seconds": args.chain_seconds,
            "http": [asdict(s) for s in http],
            "chain": [asdict(s) for s in chain],
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "sweep-results.json").write_text(json.dumps(results, indent=1) + "\n")
        print_tables(results)
        for path in [*draw(results, out_dir), draw_chain(results, out_dir)]:
            print(f"drew {path}")
        return 0
    except Exception:
        for log in sorted(work_dir.glob("gunicorn-*.log")):
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"--- last lines of {log.name} ---", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        ab._stop_children()
        ab.flush_redis()
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
