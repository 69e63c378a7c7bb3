"""A throwaway PostgreSQL cluster a benchmark can stop and start: the *target* system a
credential broker provisions roles on (never the machine's own PostgreSQL on 5432, which
Custody's database and everybody else's tests use).

initdb in a temporary folder, a free port on 127.0.0.1, fsync off. Password (SCRAM) auth over
TCP for everyone, so a dropped role, a wrong password or an expired `VALID UNTIL` is a real
login refusal; the bootstrap superuser `postgres` also gets in without a password over the
cluster's own Unix socket (in the temporary folder), which is how the benchmark watches it.
Run as root, every server binary runs as the `postgres` system user (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bindir() -> Path:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if (Path(found) / "initdb").exists():
            return Path(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    raise RuntimeError("initdb not found: install PostgreSQL's server binaries")


class TargetCluster:
    """initdb, start, stop, start again; `remove()` stops it and deletes its folder."""

    def __init__(self, *, max_connections: int = 300):
        self.bin = _bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="custody-bench-target-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "server.log"
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        pwfile = self.dir / "superuser-password"
        self.superuser_password = secrets.token_urlsafe(24)
        pwfile.write_text(self.superuser_password)
        if self.user:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions",
        )  # fmt: skip
        pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'",
            "max_connections": str(max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            "log_connections": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# custody bench target\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.up = False

    def _run(self, binary: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / binary), *args],
            cwd=self.dir,
            user=self.user.pw_uid if self.user else None,
            group=self.user.pw_gid if self.user else None,
            capture_output=True,
            text=True,
            check=check,
            start_new_session=True,
        )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60",
                  "start")  # fmt: skip
        self.up = True

    def stop(self, mode: str = "fast") -> None:
        """`fast`: the server ends every session and shuts down cleanly (a planned outage)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                  check=False)  # fmt: skip
        self.up = False

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def remove(self) -> None:
        if self.data.exists() and self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- connecting -------------------------------------------------------------------------

    def superuser_conninfo(self, dbname: str = "postgres") -> str:
        """The bootstrap superuser over the Unix socket (trust): the benchmark's own eye."""
        return f"host={self.dir} port={self.port} user=postgres dbname={dbname}"

    def dsn(self, user: str, password: str, dbname: str) -> str:
        """A TCP URL with a password, as Custody's broker and an agent connect."""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, *, dbname: str = "postgres", params=None) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.superuser_conninfo(dbname), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []


def wait_until_accepting(cluster: TargetCluster, timeout: float = 30) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(cluster.superuser_conninfo(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
