"""The contract every credential broker keeps.

A broker turns an active grant into a real credential on a system that cannot verify Custody's
tokens (a PostgreSQL login role, a Redis ACL user, an account a service provisions itself) and
destroys it when the grant ends. Brokers hold no state: everything Custody must remember about a
credential (its name, when it was created, whether its destruction is confirmed) is a
`brokers.models` row, written by `brokers.services`, which alone calls these methods.

- `validate_config` runs when an admin saves a privilege's broker; it returns the normalised
  configuration or raises `BrokerConfigError` with a sentence naming the bad field.
- `create` makes the credential `name` valid until `expires_at` at the latest and returns what
  the agent receives once (`Issued.secret`); it must not log or keep the secret.
- `destroy` makes `name` unusable: no new login, no open session or client left. It is
  idempotent (destroying what is gone is success) because the outbox retries it.
  `BrokerUnavailable` means "the target cannot be reached: try again later" and is expected
  during outages; any other exception is a failure worth an alert, retried as well.
- `holder` (optional on `create`, `destroy` and `exists`) names who the credential is for: the
  agent, privilege, grant and task. Brokers that provision on the target's side (the webhook)
  pass it on; the others ignore it. It holds no secret.
- `exists` answers whether `name` still exists on the target (for the broker's state page, the
  tests and the benchmark); it may raise `BrokerUnavailable`.

Connection secrets never live in the configuration: it names a *target*, and the secret is read
from `CUSTODY_BROKER_<TARGET>_<PART>` or `CUSTODY_BROKER_<TARGET>_<PART>_FILE` (see
`target_secret`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured

from core.env import env_str


class BrokerError(Exception):
    """A broker could not do what was asked; the message is safe to show an admin (no secret)."""


class BrokerUnavailable(BrokerError):
    """The target system cannot be reached now (connection refused, timeout): retry later."""


class BrokerConfigError(BrokerError):
    """A privilege's broker configuration is wrong; the message names the field."""


@dataclass(frozen=True)
class Issued:
    """What `create` made: `secret` goes to the agent once and nowhere else (never the audit
    log, logs or Slack); `details` are non-secret facts safe to record (group role, key
    patterns, the target's own expiry)."""

    secret: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Holder:
    """Who a credential is for: non-secret facts a broker may pass on to the target."""

    agent: str  # the agent's SPIFFE ID
    privilege: str  # resource:action
    grant_id: int
    task_id: str = ""


class Broker:
    kind: ClassVar[str]
    label: ClassVar[str]
    # The `<PART>`s of the target's environment variables (e.g. ("DSN",)): admin shows whether
    # each is set, never its value.
    secret_parts: ClassVar[tuple[str, ...]] = ()

    def validate_config(self, config: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def create(
        self,
        config: dict[str, Any],
        *,
        name: str,
        expires_at: datetime,
        holder: Holder | None = None,
    ) -> Issued:
        raise NotImplementedError

    def destroy(self, config: dict[str, Any], *, name: str, holder: Holder | None = None) -> None:
        raise NotImplementedError

    def exists(self, config: dict[str, Any], *, name: str, holder: Holder | None = None) -> bool:
        raise NotImplementedError


def check_fields(config: Any, allowed: tuple[str, ...], *, label: str) -> None:
    """The configuration is a JSON object naming only `allowed` fields (a misspelt or
    unexpected one, a password above all, is refused by name rather than ignored)."""
    if not isinstance(config, dict):
        raise BrokerConfigError("The configuration must be a JSON object.")
    unknown = set(config) - set(allowed)
    if unknown:
        raise BrokerConfigError(
            f"Unknown field(s) {', '.join(sorted(unknown))}: a {label} broker takes "
            f"{', '.join(allowed)}."
        )


_TARGET = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def check_target(config: dict[str, Any]) -> str:
    """The configuration's `target`: a short lowercase name that picks the environment
    variables holding the connection secret."""
    target = config.get("target")
    if not isinstance(target, str) or not _TARGET.match(target):
        raise BrokerConfigError(
            "target must be a short lowercase name (letters, digits, _), e.g. payments_db: it "
            "picks the environment variables that hold the connection secret."
        )
    return target


def target_variable(target: str, part: str) -> str:
    return f"CUSTODY_BROKER_{target.upper()}_{part.upper()}"


def target_secret(target: str, part: str) -> str:
    """`CUSTODY_BROKER_<TARGET>_<PART>` (or its `_FILE`), e.g. CUSTODY_BROKER_PAYMENTS_DB_DSN.
    Raises BrokerConfigError naming the variable when it is not set."""
    name = target_variable(target, part)
    try:
        value = env_str(name)
    except ImproperlyConfigured as exc:
        raise BrokerConfigError(str(exc)) from exc
    if not value:
        raise BrokerConfigError(f"{name} (or {name}_FILE) is not set in Custody's environment.")
    return value


_REGISTRY: dict[str, Broker] = {}


def register(broker_class: type[Broker]) -> type[Broker]:
    """Class decorator: make a broker available under its `kind`."""
    _REGISTRY[broker_class.kind] = broker_class()
    return broker_class


def get_broker(kind: str) -> Broker:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise BrokerConfigError(f"There is no credential broker of kind {kind!r}.") from None


def broker_kinds() -> list[tuple[str, str]]:
    return sorted((kind, broker.label) for kind, broker in _REGISTRY.items())
