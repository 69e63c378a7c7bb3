"""The Redis broker: one ACL user per grant, limited to the privilege's key patterns, commands
and channels, deleted (its clients killed) when the grant ends.

Configuration (validated when an admin saves a privilege):
    {"target": "cache", "key_patterns": ["payments:*"], "commands": ["+@read", "+set"],
     "channels": ["payments.events"]}
The admin connection comes from `CUSTODY_BROKER_<TARGET>_URL` (or `_URL_FILE`), e.g.
`redis://custody-admin:…@redis.internal:6379/0`: a user allowed `ACL` and `CLIENT KILL`.

What Redis cannot do, and what Custody does instead:
- An ACL user never expires by itself: the grant's end (and Custody's sweep, if a destroy is
  missed) is the only thing that deletes it. There is no second layer on the target's side.
- The password never reaches Redis in clear: the user is made with `#<sha256>` (Redis stores
  and compares hashes), so `MONITOR`, `SLOWLOG` or a replication stream shows at most the hash
  of a 256-bit random password. `ACL LOG` records refused logins by user name only.
- `@dangerous` commands are always removed last (`FLUSHALL`, `KEYS`, `CONFIG`, `ACL`, `CLIENT`,
  `MONITOR`, …): some ignore key patterns, others would let a credential outlive its grant.
- ACL users live in the memory of one server: a replica or cluster node needs a target of its
  own, and a Redis restart without an ACL file forgets the user (which only ends it sooner).
  With an ACL file, destroy saves it again (`ACL SAVE`), so a user someone saved there while it
  was live does not come back at the next restart.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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

TIMEOUT_SECONDS = 5
# Appended after the privilege's own rules, whatever they say.
ALWAYS_REMOVED = "-@dangerous"
_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
_PATTERN = re.compile(r"^[!-~]{1,200}$")  # printable ASCII, no space
_RULE = re.compile(r"^[+-](@[a-z]+|[a-z][a-z0-9_-]*(\|[a-z0-9_-]+)?)$")
# Rules that would hand a credential the server itself: refused at configuration time.
_REFUSED = {"+@all", "+@admin", "+@dangerous", "+acl", "+config", "+module", "+debug", "+client"}


def _string_list(config: dict[str, Any], field: str, *, required: bool) -> list[str]:
    value = config.get(field, [] if not required else None)
    if not isinstance(value, list) or (required and not value):
        kind = "a non-empty list" if required else "a list"
        raise BrokerConfigError(f"{field} must be {kind} of strings.")
    if not all(isinstance(item, str) and item for item in value):
        raise BrokerConfigError(f"{field} must hold only non-empty strings.")
    return value


def _admin_url(target: str) -> str:
    url = target_secret(target, "URL")
    parts = urlsplit(url)
    db = parts.path.strip("/")
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("redis", "rediss") or (db and not db.isdigit()) or not port_ok:
        raise BrokerConfigError(
            f"CUSTODY_BROKER_{target.upper()}_URL must be a redis:// or rediss:// URL, with a "
            "database number or none (redis://user:password@host:6379/0)."
        )
    return url


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


class _Admin:
    """The admin connection for one call: Redis errors become broker errors that name the
    server (host:port), never the URL, which holds the admin password."""

    def __init__(self, config: dict[str, Any]):
        self.url = _admin_url(check_target(config))
        self.where = _where(self.url)

    def __enter__(self) -> redis.Redis:
        self.client = redis.Redis.from_url(
            self.url,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),  # the outbox retries, not the client
            decode_responses=True,
        )
        return self.client

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.client.close()
        if exc is None or isinstance(exc, BrokerError):
            return
        if isinstance(exc, redis.AuthenticationError):
            raise BrokerError(
                f"Redis at {self.where} refused Custody's admin login: check the user and "
                "password in the target's URL."
            ) from None
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError):
            raise BrokerUnavailable(f"Redis at {self.where} cannot be reached: {exc}") from None
        if isinstance(exc, redis.RedisError):
            raise BrokerError(f"Redis at {self.where} refused: {exc}") from None


@register
class RedisBroker(Broker):
    kind = "redis"
    label = "Redis ACL user"
    secret_parts = ("URL",)

    def validate_config(self, config: dict[str, Any]) -> dict[str, Any]:
        check_fields(config, ("target", "key_patterns", "commands", "channels"), label="Redis")
        target = check_target(config)
        key_patterns = _string_list(config, "key_patterns", required=True)
        channels = _string_list(config, "channels", required=False)
        for pattern in key_patterns + channels:
            if not _PATTERN.match(pattern):
                raise BrokerConfigError(
                    f"{pattern!r} is not a key or channel pattern: printable characters, no "
                    "spaces, at most 200."
                )
        commands = [rule.lower() for rule in _string_list(config, "commands", required=True)]
        for rule in commands:
            if not _RULE.match(rule):
                raise BrokerConfigError(
                    f"{rule!r} is not a command rule: write +@category, -@category, +command, "
                    "-command or +command|subcommand (e.g. +@read, +set)."
                )
            if rule in _REFUSED or rule.split("|")[0] in _REFUSED:
                raise BrokerConfigError(
                    f"{rule!r} would let a brokered credential manage the server (or outlive its "
                    "grant); @dangerous commands are never given."
                )
        if not any(rule.startswith("+") for rule in commands):
            raise BrokerConfigError("commands must allow something: add at least one + rule.")
        _admin_url(target)  # last: the configuration's own mistakes are told first
        return {
            "target": target,
            "key_patterns": key_patterns,
            "commands": commands,
            "channels": channels,
        }

    def create(
        self,
        config: dict[str, Any],
        *,
        name: str,
        expires_at: datetime,
        holder: Holder | None = None,
    ) -> Issued:
        config = self.validate_config(config)
        _check_name(name)
        password = secrets.token_urlsafe(32)
        password_hash = hashlib.sha256(password.encode()).hexdigest()
        rules = [
            "reset",  # a retried create starts from nothing, whatever was there
            "on",
            f"#{password_hash}",
            *(f"~{pattern}" for pattern in config["key_patterns"]),
            "resetchannels",
            *(f"&{channel}" for channel in config["channels"]),
            *config["commands"],
            ALWAYS_REMOVED,
        ]
        admin = _Admin(config)
        try:
            with admin as client:
                client.execute_command("ACL", "SETUSER", name, *rules)
        except BrokerError as exc:
            raise type(exc)(str(exc).replace(password_hash, "…")) from None
        parts = urlsplit(admin.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        db = int(parts.path.strip("/") or 0)
        url_host = f"[{host}]" if ":" in host else host
        return Issued(
            secret={
                "username": name,
                "password": password,
                "host": host,
                "port": port,
                "db": db,
                "expires_at": expires_at.isoformat(),
                "url": f"{parts.scheme}://{quote(name, safe='')}:{quote(password, safe='')}"
                f"@{url_host}:{port}/{db}",
            },
            details={
                "server": f"{host}:{port}",
                "key_patterns": config["key_patterns"],
                "commands": [*config["commands"], ALWAYS_REMOVED],
                "channels": config["channels"],
                "target_expiry": "none (Redis ACL users do not expire; Custody deletes it)",
            },
        )

    def destroy(self, config: dict[str, Any], *, name: str, holder: Holder | None = None) -> None:
        _check_name(name)
        with _Admin(config) as client:
            # DELUSER also drops the user's connections; CLIENT KILL makes sure of it and is
            # harmless (an error we ignore) when the user is already gone.
            client.execute_command("ACL", "DELUSER", name)
            try:
                client.execute_command("CLIENT", "KILL", "USER", name)
            except redis.ResponseError as exc:
                if "no such user" not in str(exc).lower():
                    raise
            # With an ACL file, a user saved there while live would come back at the next
            # restart: the file is rewritten without it. Without one there is nothing to save.
            try:
                client.execute_command("ACL", "SAVE")
            except redis.ResponseError as exc:
                if "not configured to use an acl file" not in str(exc).lower():
                    raise

    def exists(self, config: dict[str, Any], *, name: str, holder: Holder | None = None) -> bool:
        _check_name(name)
        with _Admin(config) as client:
            return client.execute_command("ACL", "GETUSER", name) is not None


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise BrokerError(f"{name!r} cannot be a Redis user name (letters, digits, _.:@-).")
