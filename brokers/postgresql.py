"""PostgreSQL: a login role per grant, member of the privilege's group role.

Configuration: `target` (the admin connection comes from `CUSTODY_BROKER_<TARGET>_DSN` or
`..._DSN_FILE`: a role with CREATEROLE and ADMIN OPTION on the group role), `group_role` (must
exist; what it may do is what the credential may do), `connection_limit` (1..20, default 2),
`database` (optional: the dbname handed to the agent, default the admin DSN's).

- create: `CREATE ROLE <name> LOGIN PASSWORD '<SCRAM verifier>' VALID UNTIL '<grant end>'
  CONNECTION LIMIT n IN ROLE <group>`. The password is 32 random bytes, and only its SCRAM-SHA-256
  verifier (computed here) is sent, so the password appears in no statement PostgreSQL could log.
  `VALID UNTIL` is the defence in depth: the server refuses password logins after the grant's end
  even if Custody never destroys the role (it does not apply to `trust` or certificate auth).
- destroy: `ALTER ROLE NOLOGIN` (no new session), `pg_terminate_backend` of its sessions,
  membership of the admin in the role (so a CREATEROLE admin may `DROP OWNED` on PostgreSQL 15),
  `DROP OWNED` (in the admin connection's database) and `DROP ROLE IF EXISTS`. Idempotent.
Connection refused or timed out → BrokerUnavailable (connect_timeout 5 s, statements 10 s).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from brokers.base import (
    Broker,
    BrokerConfigError,
    BrokerError,
    BrokerUnavailable,
    Holder,
    Issued,
    check_fields,
    check_target,
    register,
    target_secret,
)

_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")
_CONNECT_TIMEOUT = 5
_STATEMENT_TIMEOUT_MS = 10_000
_SCRAM_ITERATIONS = 4096


def scram_verifier(password: str, *, iterations: int = _SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802/7677; its own format), so the
    password itself never reaches the server."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@register
class PostgresBroker(Broker):
    kind = "postgresql"
    label = "PostgreSQL login role"
    secret_parts = ("DSN",)

    def validate_config(self, config: dict[str, Any]) -> dict[str, Any]:
        check_fields(
            config, ("target", "group_role", "connection_limit", "database"), label="PostgreSQL"
        )
        target = check_target(config)
        group_role = config.get("group_role")
        if not isinstance(group_role, str) or not _ROLE.match(group_role):
            raise BrokerConfigError(
                "group_role must name an existing PostgreSQL role (letters, digits, _), e.g. "
                "payments_read: the credential may do what it may."
            )
        limit = config.get("connection_limit", 2)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 20:
            raise BrokerConfigError("connection_limit must be a whole number from 1 to 20.")
        database = config.get("database", "")
        if not isinstance(database, str) or (database and not _ROLE.match(database)):
            raise BrokerConfigError("database must be a database name (letters, digits, _).")
        normalised = {"target": target, "group_role": group_role, "connection_limit": limit}
        if database:
            normalised["database"] = database
        self._check_group_role(normalised)
        return normalised

    def _check_group_role(self, config: dict[str, Any]) -> None:
        """Checked when the target can be reached now; otherwise on first use (an admin may
        configure a broker before the target's secret is deployed)."""
        try:
            with self._connect(config) as connection:
                found = connection.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", [config["group_role"]]
                ).fetchone()
        except (BrokerUnavailable, BrokerConfigError):
            return
        if found is None:
            raise BrokerConfigError(
                f"group_role {config['group_role']!r} does not exist on the target "
                f"{config['target']}."
            )

    def _dsn(self, config: dict[str, Any]) -> str:
        return target_secret(config["target"], "DSN")

    def _connect(self, config: dict[str, Any]) -> psycopg.Connection:
        try:
            return psycopg.connect(
                self._dsn(config),
                connect_timeout=_CONNECT_TIMEOUT,
                autocommit=True,
                options=f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}",
            )
        except psycopg.OperationalError as exc:
            raise BrokerUnavailable(_first_line(exc)) from None

    def create(
        self,
        config: dict[str, Any],
        *,
        name: str,
        expires_at: datetime,
        holder: Holder | None = None,
    ) -> Issued:
        password = secrets.token_urlsafe(32)
        limit = int(config.get("connection_limit", 2))
        statement = sql.SQL(
            "CREATE ROLE {name} LOGIN PASSWORD {verifier} VALID UNTIL {until} "
            "CONNECTION LIMIT {limit} IN ROLE {group}"
        ).format(
            name=sql.Identifier(name),
            verifier=sql.Literal(scram_verifier(password)),
            until=sql.Literal(expires_at.isoformat()),
            limit=sql.Literal(limit),
            group=sql.Identifier(config["group_role"]),
        )
        with self._connect(config) as connection:
            try:
                connection.execute(statement)
            except psycopg.OperationalError as exc:
                raise BrokerUnavailable(_first_line(exc)) from None
            except psycopg.Error as exc:
                raise BrokerError(_first_line(exc)) from None
            admin = conninfo_to_dict(connection.info.dsn)
        host = admin.get("host") or "localhost"
        port = int(admin.get("port") or 5432)
        dbname = config.get("database") or admin.get("dbname") or "postgres"
        return Issued(
            secret={
                "username": name,
                "password": password,
                "host": host,
                "port": port,
                "dbname": dbname,
                "dsn": make_conninfo(
                    host=host, port=port, dbname=dbname, user=name, password=password
                ),
                "expires_at": expires_at.isoformat(),
            },
            details={
                "group_role": config["group_role"],
                "connection_limit": limit,
                "valid_until": expires_at.isoformat(),
                "host": host,
                "port": port,
                "dbname": dbname,
            },
        )

    def destroy(self, config: dict[str, Any], *, name: str, holder: Holder | None = None) -> None:
        role = sql.Identifier(name)
        with self._connect(config) as connection:
            try:
                if not self._role_exists(connection, name):
                    return
                connection.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
                connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE usename = %s AND pid <> pg_backend_pid()",
                    [name],
                )
                # DROP OWNED needs the privileges of the role. A least-privilege admin
                # (CREATEROLE, not superuser) does not get them by creating it on PostgreSQL 15
                # (16 makes it ADMIN, not a member): it takes membership first, which CREATEROLE
                # allows for any role that is not a superuser.
                connection.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
                connection.execute(sql.SQL("DROP OWNED BY {}").format(role))
                connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
            except psycopg.OperationalError as exc:
                raise BrokerUnavailable(_first_line(exc)) from None
            except psycopg.Error as exc:
                raise BrokerError(_first_line(exc)) from None

    def exists(self, config: dict[str, Any], *, name: str, holder: Holder | None = None) -> bool:
        with self._connect(config) as connection:
            return self._role_exists(connection, name)

    @staticmethod
    def _role_exists(connection: psycopg.Connection, name: str) -> bool:
        return (
            connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone()
            is not None
        )


def _first_line(exc: Exception) -> str:
    """psycopg's message without its DSN details: the first line is the cause."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
