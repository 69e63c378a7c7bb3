"""Seed N audit events fast, as one valid hash chain, with a head and signed checkpoints that
agree with it: the data set the 10-million-event benchmarks run on (issue 17).

    .venv/bin/python bench/audit_seed.py [--events 10000000] [--database custody_bench_audit10m]
        [--agents 2000] [--people 200] [--days 365] [--checkpoint-every 10000] [--keep]

Drops, creates and migrates its own PostgreSQL database (unless --keep: then it appends to the
chain already there), registers agents and people directly (a seed is not evidence), then
writes events with psycopg 3's `cursor.copy` in sequence order: each hash is computed by
`audit.models.chain_hash`, the function the model itself uses, so the chain verifies exactly as
`record()`'s would. The spread is roughly a busy deployment's year: most events are tool calls,
then requests, policy answers, decisions, grants and tokens; agents follow a skewed (Zipf-like)
popularity, decisions are made by people, expiries and sweeps by the system; times rise from
--days ago to now. Every --checkpoint-every events a checkpoint is signed with the deployment's
checkpoint key (as the publisher would have) and appended to CUSTODY_CHECKPOINT_FILE and the
database's copies; the last is at the head.

On PostgreSQL the events are partitioned by sequence (audit migration 0010): the seed makes
partitions of about a month's events (--events × 30 / --days, a whole number of checkpoint
intervals) before the rows that land in them, and signs each one's last event, as the publisher
would. The secondary indexes are dropped before the load and rebuilt after it (one sort each
instead of 10M random inserts), as a restore would. Prints events/s for hashing + COPY and the
time of the index rebuild separately.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATABASE = "custody_bench_audit10m"

# (verb, weight, actor kind, subjects): the mix of a year of traffic, tool calls dominating.
VERBS = [
    ("tool.called", 520, "agent", "grant"),
    ("token.issued", 90, "agent", "grant"),
    ("request.created", 70, "agent", "request"),
    ("policy.evaluated", 70, "system", "request"),
    ("decision.recorded", 45, "user", "request"),
    ("grant.issued", 45, "system", "grant"),
    ("grant.expired", 30, "system", "grant"),
    ("grant.revoked", 12, "user", "grant"),
    ("request.denied", 8, "user", "request"),
    ("request.expired", 5, "system", "request"),
    ("delegation.created", 6, "agent", "grant"),
    ("tool.refused", 5, "agent", "grant"),
    ("introspection.refused", 4, "system", "grant"),
    ("auth.rejected", 4, "system", "none"),
    ("login.failed", 3, "system", "none"),
    ("eligibility.granted", 3, "user", "agent"),
    ("agent.updated", 2, "user", "agent"),
    ("review.completed", 1, "user", "agent"),
    ("agent.suspended", 1, "user", "agent"),
    ("policy.changed", 1, "user", "none"),
]
TOOLS = ["sql.select", "sql.update", "http.get", "http.post", "s3.put", "slack.post", "k8s.apply"]


def configure(database: str) -> Path:
    var_dir = Path(f"/tmp/custody-bench-{database}")
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
            "SECRET_KEY": "bench-only-secret-key-0123456789abcdefghijklmnop",
            "ALLOWED_HOSTS": "testserver,127.0.0.1",
            "DEBUG": "false",
            "CUSTODY_VAR_DIR": str(var_dir),
            "CUSTODY_CHECKPOINT_FILE": str(var_dir / "audit-checkpoints.jsonl"),
        }
    )
    sys.path.insert(0, str(ROOT))
    return var_dir


def fresh_database(database: str, var_dir: Path) -> None:
    for sql in (f"DROP DATABASE IF EXISTS {database} WITH (FORCE)", f"CREATE DATABASE {database}"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)
    (var_dir / "audit-checkpoints.jsonl").unlink(missing_ok=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)


def seed_estate(agent_count: int, people_count: int):
    """Agents and people, written directly: the audit page resolves their names and the agent
    filter offers them."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from agents.models import Agent

    user_model = get_user_model()
    people = list(user_model.objects.filter(username__startswith="person-"))
    if not people:
        user_model.objects.bulk_create(
            [user_model(username=f"person-{n:04d}") for n in range(people_count)]
        )
        people = list(user_model.objects.filter(username__startswith="person-"))
    team, _ = Group.objects.get_or_create(name="bench-audit-team")
    agents = list(Agent.objects.filter(spiffe_id__startswith="spiffe://bench.test/agents/"))
    if not agents:
        Agent.objects.bulk_create(
            [
                Agent(
                    spiffe_id=f"spiffe://bench.test/agents/a{n:05d}",
                    name=f"Agent {n:05d}",
                    sponsor=people[n % len(people)],
                    team=team,
                )
                for n in range(agent_count)
            ],
            batch_size=2000,
        )
        agents = list(Agent.objects.filter(spiffe_id__startswith="spiffe://bench.test/agents/"))
    return [(a.pk, a.spiffe_id) for a in agents], [p.username for p in people]


def _secondary_indexes(cursor, table: str) -> tuple[list[str], list[str]]:
    """(drop statements, create statements) for every index and unique constraint but the PK."""
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype = 'u'",
        [table],
    )
    constraints = cursor.fetchall()
    cursor.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = %s::regclass "
        "AND NOT x.indisprimary AND i.relname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
        [table, table],
    )
    indexes = cursor.fetchall()
    drops = [f'ALTER TABLE {table} DROP CONSTRAINT "{name}"' for name, _ in constraints]
    drops += [f'DROP INDEX "{name}"' for name, _ in indexes]
    creates = [f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {d}' for name, d in constraints]
    # A partitioned table's index reads `ON ONLY` (the parent alone): built on every partition.
    creates += [definition.replace(" ON ONLY ", " ON ", 1) for _, definition in indexes]
    return drops, creates


def write_events(args, agents, people) -> tuple[int, str, float]:
    from django.db import connection

    from audit import checkpoints
    from audit.models import AuditChainHead, AuditCheckpoint, AuditEvent, chain_hash
    from audit.partitions import partition_cover

    rng = random.Random(17)
    weights = [weight for _, weight, _, _ in VERBS]
    # Zipf-ish: a few agents do most of the work, as in real estates.
    agent_weights = [1 / (rank + 1) ** 0.8 for rank in range(len(agents))]
    head = AuditChainHead.objects.get(id=1)
    sequence, previous = head.last_sequence, head.last_hash
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=args.days)
    step = (now - start).total_seconds() * 1_000_000 / max(args.events, 1)  # µs per event
    occurred_us = 0.0
    next_request, next_grant = 1, 1
    table = AuditEvent._meta.db_table
    checkpoint_file = Path(os.environ["CUSTODY_CHECKPOINT_FILE"])
    columns = (
        "sequence, occurred_at, actor_type, actor_id, verb, agent_id, access_request_id, "
        "grant_id, data, previous_hash, hash"
    )
    dumps = json.dumps
    copies: list[AuditCheckpoint] = []
    block = 100_000
    # PostgreSQL partitions (audit migration 0010) of about a month each, a whole number of
    # checkpoint intervals, made before the rows that land in them; each one's last event is
    # signed, as the publisher signs every partition end it passes (so each can be archived).
    per_month = args.events * 30 // max(args.days, 1)
    partition_size = max(
        args.checkpoint_every, per_month // args.checkpoint_every * args.checkpoint_every
    )
    partition_ends: set[int] = set()
    with connection.cursor() as django_cursor:
        cursor = django_cursor.cursor  # psycopg 3's own cursor, for COPY
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SET maintenance_work_mem = '512MB'")
        drops, creates = _secondary_indexes(cursor, table)
        for statement in drops:
            cursor.execute(statement)
        started = time.perf_counter()
        remaining = args.events
        while remaining:
            count = min(block, remaining)
            remaining -= count
            for partition in partition_cover(through=sequence + count, size=partition_size):
                partition_ends.add(partition.last_sequence)
            verbs = rng.choices(VERBS, weights=weights, k=count)
            picks = rng.choices(agents, weights=agent_weights, k=count)
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for (verb, _, actor_kind, subject), (agent_id, spiffe_id) in zip(
                    verbs, picks, strict=True
                ):
                    sequence += 1
                    occurred_us += step * (0.5 + rng.random())
                    occurred_at = start + timedelta(microseconds=int(occurred_us))
                    if actor_kind == "agent":
                        actor_type, actor_id = "agent", spiffe_id
                    elif actor_kind == "user":
                        actor_type, actor_id = "user", people[sequence % len(people)]
                    else:
                        actor_type, actor_id = "system", "custody"
                    request_id = grant_id = None
                    if subject == "request":
                        if verb == "request.created":
                            next_request += 1
                        request_id = max(1, next_request - (sequence % 3))
                    elif subject == "grant":
                        if verb == "grant.issued":
                            next_grant += 1
                        grant_id = max(1, next_grant - (sequence % 5))
                        request_id = grant_id
                    if verb == "tool.called":
                        data = {"tool": TOOLS[sequence % len(TOOLS)], "target": f"t{sequence}"}
                    elif subject == "none":
                        data = {"reason": "bad signature"} if actor_kind == "system" else {}
                    else:
                        data = {"task_id": f"task-{request_id or agent_id}"}
                    agent_id_value = None if subject == "none" else agent_id
                    fields = {
                        "sequence": sequence,
                        "occurred_at": occurred_at,
                        "actor_type": actor_type,
                        "actor_id": actor_id,
                        "verb": verb,
                        "agent_id": agent_id_value,
                        "access_request_id": request_id,
                        "grant_id": grant_id,
                        "data": data,
                        "previous_hash": previous,
                    }
                    digest = chain_hash(fields)
                    copy.write_row(
                        (
                            sequence,
                            occurred_at,
                            actor_type,
                            actor_id,
                            verb,
                            agent_id_value,
                            request_id,
                            grant_id,
                            dumps(data, ensure_ascii=False),
                            previous,
                            digest,
                        )
                    )
                    previous = digest
                    if sequence % args.checkpoint_every == 0 or sequence in partition_ends:
                        copies.append(_checkpoint(checkpoints, sequence, digest, occurred_at))
            done = args.events - remaining
            elapsed = time.perf_counter() - started
            print(
                f"  {done:>11,} events  {done / elapsed:>9,.0f} events/s",
                file=sys.stderr,
                flush=True,
            )
        if not copies or copies[-1].sequence != sequence:
            copies.append(_checkpoint(checkpoints, sequence, previous, occurred_at))
        load_seconds = time.perf_counter() - started
        cursor.execute(
            f"UPDATE {AuditChainHead._meta.db_table} SET last_sequence = %s, last_hash = %s "  # noqa: S608
            "WHERE id = 1",
            [sequence, previous],
        )
        index_started = time.perf_counter()
        for statement in creates:
            cursor.execute(statement)
        cursor.execute(f"ANALYZE {table}")
        index_seconds = time.perf_counter() - index_started
    with checkpoint_file.open("a", encoding="utf-8") as handle:
        for copy_row in copies:
            handle.write(dumps(copy_row.document, sort_keys=True, separators=(",", ":")) + "\n")
    AuditCheckpoint.objects.bulk_create(copies, batch_size=2000, ignore_conflicts=True)
    return load_seconds, index_seconds, len(copies)


def _checkpoint(checkpoints, sequence: int, digest: str, occurred_at: datetime):
    from audit.models import AuditCheckpoint

    signed_at = (occurred_at + timedelta(seconds=30)).replace(microsecond=0)
    document = checkpoints.sign(
        sequence=sequence, chain_hash=digest, signed_at=signed_at.isoformat()
    )
    return AuditCheckpoint(sequence=sequence, hash=digest, signed_at=signed_at, document=document)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="append to the existing database")
    args = parser.parse_args()
    var_dir = configure(args.database)
    if not args.keep:
        fresh_database(args.database, var_dir)
    import django

    django.setup()
    agents, people = seed_estate(args.agents, args.people)
    print(f"Seeding {args.events:,} audit events into {args.database} …", file=sys.stderr)
    load_seconds, index_seconds, signed = write_events(args, agents, people)
    print(
        f"hash + COPY: {args.events:,} events in {load_seconds:.1f} s = "
        f"{args.events / load_seconds:,.0f} events/s; index rebuild {index_seconds:.1f} s; "
        f"{signed:,} checkpoints signed; total {args.events / (load_seconds + index_seconds):,.0f}"
        f" events/s ({os.getloadavg()[0]:.2f} load average)"
    )


if __name__ == "__main__":
    main()
