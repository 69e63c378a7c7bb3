"""The audit log at 10M events: server time of the audit page, each filter and keyset pages deep
in the log; the export's rows/s and peak memory; incremental and full verification.

    .venv/bin/python bench/audit_seed.py                 # once: 10M events (minutes)
    .venv/bin/python bench/audit_pages_bench.py [--database custody_bench_audit10m]
        [--rounds 15] [--export-rows 1000000] [--full-verify] [--no-pages]

Runs against the database bench/audit_seed.py filled (it is not re-seeded). Pages are rendered
by Django's test client in-process with production settings (DEBUG off) as a person who may
read the whole log, so the figure is server time: routing, middleware, queries, templates.
For each page: median, p95 and max over --rounds after one warm-up, the queries it ran, and
the indexes PostgreSQL's plan used for the page's audit query (EXPLAIN of the query as run).

The export streams --export-rows events (JSON Lines, the web export's generator and the
management command's) and prints rows/s and this process's peak RSS growth, sampled every 50,000
rows: constant memory means the peak does not grow with the rows. Verification: the incremental
walk from the newest signed checkpoint (what beat and "Verify now" run), and with --full-verify
the whole chain (minutes at 10M), each with events/s.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_seed import DEFAULT_DATABASE, configure  # noqa: E402

TARGET_MS = 150


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def plan_indexes(sql: str, params) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    used = re.findall(
        r"(Index Only Scan|Index Scan|Bitmap Index Scan)(?: Backward)? (?:using|on) (\w+)", plan
    )
    seq = " + Seq Scan" if "Seq Scan on audit_auditevent" in plan else ""
    sort = " + Sort" if re.search(r"^\s*(->\s*)?(Incremental )?Sort", plan, re.M) else ""
    names = ", ".join(dict.fromkeys(name for _, name in used)) or "none"
    return f"{names}{seq}{sort}"


def measure_pages(rounds: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from agents.models import Agent
    from audit.models import AuditEvent

    user_model = get_user_model()
    auditor, _ = user_model.objects.get_or_create(
        username="bench-auditor", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(auditor)
    head = AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first()
    busy = Agent.objects.order_by("pk").first()  # rank 1 of the skewed spread: the busiest
    quiet = Agent.objects.order_by("-pk").first()
    newest = AuditEvent.objects.filter(sequence=head).values_list("occurred_at", flat=True).get()
    sample = AuditEvent.objects.filter(sequence=head // 2).values(
        "occurred_at", "grant_id", "access_request_id"
    )[0]
    middle = sample["occurred_at"]
    day = "%Y-%m-%dT%H:%M"
    pages = [
        ("first page", "/audit/"),
        ("keyset page at the middle", f"/audit/?before={head // 2}"),
        ("keyset page near the start", f"/audit/?before={1000}"),
        ("verb tool.called", "/audit/?verb=tool.called"),
        ("verb policy.changed (rare)", "/audit/?verb=policy.changed"),
        ("verb family grant.*", "/audit/?verb=grant.*"),
        ("busiest agent", f"/audit/?agent={busy.pk}"),
        ("quietest agent", f"/audit/?agent={quiet.pk}"),
        ("quietest agent, page 2", None),  # filled from the previous page's link
        ("person", "/audit/?person=person-0007"),
        (
            "one day, 6 months ago",
            f"/audit/?since={middle.strftime(day)}&until="
            f"{(middle + timedelta(days=1)).strftime(day)}",
        ),
        (
            "one month, 6 months ago",
            f"/audit/?since={middle.strftime(day)}&until="
            f"{(middle + timedelta(days=30)).strftime(day)}",
        ),
        ("last hour", f"/audit/?since={(newest - timedelta(hours=1)).strftime(day)}"),
        ("grant #", f"/audit/?grant={sample['grant_id'] or 1}"),
        ("request #", f"/audit/?access_request={sample['access_request_id'] or 1}"),
        ("verb + agent + month", None),
    ]
    pages[-1] = (
        "verb + agent + month",
        f"/audit/?verb=tool.called&agent={busy.pk}&since={middle.strftime(day)}&until="
        f"{(middle + timedelta(days=30)).strftime(day)}",
    )
    print(
        f"\nAudit page at {head:,} events, {rounds} rounds each "
        f"(load average {os.getloadavg()[0]:.2f}); target < {TARGET_MS} ms"
    )
    print(
        f"{'page':<30} {'median':>8} {'p95':>8} {'max':>8} {'cpu':>8} {'queries':>7}  rows  "
        "index use (the page's audit query)"
    )
    previous_next = None
    for name, url in pages:
        if url is None:
            url = previous_next
        response = client.get(url)  # warm-up
        assert response.status_code == 200, (url, response.status_code)
        timings, cpu = [], []
        for _ in range(rounds):
            with CaptureQueriesContext(connection) as queries:
                started, started_cpu = time.perf_counter(), time.process_time()
                response = client.get(url)
                timings.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - started_cpu) * 1000)
        html = response.content.decode()
        rows = html.count('<tr id="event-')
        match = re.search(r'href="\?([^"]*before=\d+)"', html)
        previous_next = f"/audit/?{match.group(1).replace('&amp;', '&')}" if match else url
        # The page's own query (LIMIT 51), not the probes that bound a time range.
        audit_sql = [
            q["sql"]
            for q in queries.captured_queries
            if '"audit_auditevent"' in q["sql"] and "LIMIT 51" in q["sql"]
        ]
        used = plan_indexes(audit_sql[-1], None) if audit_sql else "-"
        timings.sort()
        p95 = timings[max(0, int(len(timings) * 0.95) - 1)]
        flag = "" if statistics.median(timings) < TARGET_MS else "  (over target)"
        print(
            f"{name:<30} {statistics.median(timings):>6.1f}ms {p95:>6.1f}ms {timings[-1]:>6.1f}ms "
            f"{statistics.median(cpu):>6.1f}ms {len(queries):>7}  {rows:>4}  {used}{flag}"
        )


def measure_export(rows: int) -> None:
    from audit.exports import export_rows, iter_jsonl
    from audit.selectors import audit_event_list

    events = export_rows(audit_event_list())
    baseline = rss_mb()
    peak = 0.0
    written = 0
    size = 0
    started = time.perf_counter()
    for written, line in enumerate(iter_jsonl(events), start=1):
        size += len(line)
        if written % 50_000 == 0:
            peak = max(peak, rss_mb() - baseline)
        if written >= rows:
            break
    seconds = time.perf_counter() - started
    print(
        f"\nExport (JSON Lines, streamed): {written:,} rows in {seconds:.1f} s = "
        f"{written / seconds:,.0f} rows/s, {size / seconds / 2**20:.1f} MiB/s; peak RSS growth "
        f"{peak:.1f} MiB over the start ({baseline:.0f} MiB) "
        f"(ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB); "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def measure_verify(full: bool, since_checkpoint: int) -> None:
    from django.db import transaction

    from audit.services import Actor, deferred_evidence, record
    from audit.verification import verify

    # What a minute of heavy traffic leaves after the newest checkpoint, through record().
    with transaction.atomic(), deferred_evidence():
        for n in range(since_checkpoint):
            record(actor=Actor.system("bench"), verb="tool.called", data={"n": n})

    for mode in ["incremental", "full"] if full else ["incremental"]:
        started = time.perf_counter()
        report = verify(full=mode == "full")
        seconds = time.perf_counter() - started
        print(
            f"Verify {mode:<11}: {'intact' if report.ok else report.problem}; "
            f"{report.verified:,} events walked after #{report.started_after:,} in {seconds:.2f} s "
            f"= {report.verified / seconds:,.0f} events/s (load average {os.getloadavg()[0]:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--export-rows", type=int, default=1_000_000)
    parser.add_argument("--full-verify", action="store_true")
    parser.add_argument(
        "--since-checkpoint",
        type=int,
        default=5000,
        help="events appended through record() after the newest checkpoint before verifying",
    )
    parser.add_argument("--no-pages", action="store_true")
    args = parser.parse_args()
    configure(args.database)
    import django

    django.setup()
    if not args.no_pages:
        measure_pages(args.rounds)
    if args.export_rows:
        measure_export(args.export_rows)
    measure_verify(args.full_verify, args.since_checkpoint)


if __name__ == "__main__":
    main()
