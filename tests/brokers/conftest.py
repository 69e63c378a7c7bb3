"""The machine's PostgreSQL (127.0.0.1:5432) as the brokers' target, whatever database Custody
itself runs on: per test session a target database, a table and a read group role with unique
names, dropped afterwards; and a PostgreSQL of the test's own (initdb/pg_ctl) to stop and start."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from audit.services import Actor
from brokers.models import PrivilegeBroker
from brokers.services import privilege_broker_save
from tests.approvals import conftest as approvals_conftest
from tests.workers import free_port

privileges = approvals_conftest.privileges
submit = approvals_conftest.submit

ADMIN_DSN = os.environ.get(
    "CUSTODY_TEST_BROKER_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def admin_execute(*statements, dsn: str = ADMIN_DSN):
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as connection:
        for statement in statements:
            connection.execute(statement)


@pytest.fixture(scope="session")
def pg_target():
    """A database with a table, a group role that may read it, and a target name whose DSN
    variable points there (set in os.environ, so worker subprocesses inherit it)."""
    suffix = uuid.uuid4().hex[:8]
    database, group = f"custody_target_{suffix}", f"custody_read_{suffix}"
    target = f"pg_{suffix}"
    admin_execute(
        sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)),
        sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)),
    )
    dsn = f"postgresql://postgres@127.0.0.1:5432/{database}"
    admin_execute(
        "CREATE TABLE invoices (id int PRIMARY KEY, amount int)",
        "INSERT INTO invoices VALUES (1, 100), (2, 250)",
        sql.SQL("GRANT SELECT ON invoices TO {}").format(sql.Identifier(group)),
        dsn=dsn,
    )
    variable = f"CUSTODY_BROKER_{target.upper()}_DSN"
    os.environ[variable] = dsn
    yield {"target": target, "group_role": group, "database": database, "dsn": dsn}
    os.environ.pop(variable, None)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
        left = [
            row[0]
            for row in connection.execute(
                "SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid "
                "JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = %s",
                [group],
            )
        ]
        for role in left:
            connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(group)))


def role_exists(name: str, dsn: str = ADMIN_DSN) -> bool:
    with psycopg.connect(dsn, autocommit=True) as connection:
        return (
            connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone()
            is not None
        )


def add_broker(privilege, config: dict, *, kind: str = "postgresql") -> PrivilegeBroker:
    return privilege_broker_save(
        privilege_broker=PrivilegeBroker(privilege=privilege, kind=kind, config=config),
        actor=Actor.system("test-admin"),
    )


@pytest.fixture
def read_broker(privileges, pg_target):
    return add_broker(
        privileges["read"],
        {
            "target": pg_target["target"],
            "group_role": pg_target["group_role"],
            "database": pg_target["database"],
        },
    )


def wait_for(condition, *, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    assert candidates, f"{name} not found (PostgreSQL server binaries)"
    return str(candidates[-1])


class PostgresServer:
    """A PostgreSQL cluster of the test's own, on a free port, stoppable."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="custody-pg-"))
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    _bin("initdb"),
                    "-D",
                    str(self.dir / "data"),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def start(self) -> None:
        subprocess.run(
            _as_postgres(
                [
                    _bin("pg_ctl"),
                    "-D",
                    str(self.dir / "data"),
                    "-l",
                    str(self.dir / "log"),
                    "-w",
                    "-o",
                    f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres(
                [_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"]
            ),
            check=False,
            capture_output=True,
        )

    def remove(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)


@pytest.fixture
def own_postgres():
    server = PostgresServer()
    yield server
    server.remove()
