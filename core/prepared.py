"""The hot paths' wide statements, planned once per database connection.

Authentication, introspection and a submission's decision each read several tables in one
statement (core/raw_rows.py). Planning such a statement costs PostgreSQL far more than running
it: the introspection read took 1.3 ms to plan and 0.23 ms to run (EXPLAIN ANALYZE on the
benchmark's database; pgbench: 5.6 ms a call through the simple protocol against 0.53 ms
prepared, on a loaded machine). A prepared statement is planned once per server session and its
plan reused.

Django's psycopg cursors bind parameters on the client and never prepare (Django turns psycopg's
prepared statements off so connection poolers keep working). So the statement is prepared in SQL,
`PREPARE name AS ...` once per connection, and run as `EXECUTE name (...)` through Django's own
cursor: counted, logged and wrapped like any other query.

A prepared statement lives in the server session. Behind a pooler that hands each transaction a
different session (PgBouncer with `pool_mode = transaction`), it would be missing on the next
one: set CUSTODY_DB_PREPARED_STATEMENTS=false there (docs/scaling.md). SQLite, and that setting,
run the statement as it is.
"""

from __future__ import annotations

import hashlib
import re
import weakref

from django.conf import settings

# psycopg connection -> names prepared on it. A new connection (a restart, CONN_MAX_AGE) is a new
# key, so its statements are prepared again; a closed one drops out with its object.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PLACEHOLDER = re.compile(r"%s")


def _numbered(sql: str) -> tuple[str, int]:
    """`%s` placeholders as `$1`, `$2`, ...: PREPARE's parameters (types inferred by PostgreSQL
    from where each is used). The statements passed here hold no literal `%`."""
    count = 0

    def number(_match) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(number, sql), count


def execute(cursor, sql: str, params: list) -> None:
    """`cursor.execute(sql, params)`, prepared on PostgreSQL (see the module's docstring)."""
    database = cursor.db
    if database.vendor != "postgresql" or not settings.CUSTODY_DB_PREPARED_STATEMENTS:
        cursor.execute(sql, params)
        return
    name = "custody_" + hashlib.sha256(sql.encode()).hexdigest()[:24]
    names = _prepared.setdefault(database.connection, set())
    if name not in names:
        numbered, count = _numbered(sql)
        if count != len(params):
            raise ValueError(f"{count} placeholders for {len(params)} parameters")
        cursor.execute(f"PREPARE {name} AS {numbered}")
        names.add(name)
    placeholders = ", ".join(["%s"] * len(params))
    cursor.execute(f"EXECUTE {name} ({placeholders})" if params else f"EXECUTE {name}", params)
