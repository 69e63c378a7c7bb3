"""The Redis broker against a redis-server this module starts: Custody logs in as an ACL admin
user (the default user is off), and the credentials it makes are real ACL users."""

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from brokers.base import BrokerConfigError, BrokerError, BrokerUnavailable, get_broker
from brokers.redis import RedisBroker  # noqa: F401  (registers the kind)
from tests.workers import RedisServer

ADMIN_PASSWORD = "admin-password-for-this-test-only"
CONFIG = {"target": "cache", "key_patterns": ["payments:*"], "commands": ["+@read", "+set"]}


@pytest.fixture(scope="module")
def server():
    server = RedisServer(
        *("--user", "custody-admin", "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all"),
        *("--user", "default", "off"),
    )
    yield server
    server.stop()


@pytest.fixture
def target(server, monkeypatch):
    if server.process.poll() is not None:
        server.start()
    monkeypatch.setenv(
        "CUSTODY_BROKER_CACHE_URL",
        f"redis://custody-admin:{ADMIN_PASSWORD}@127.0.0.1:{server.port}/0",
    )
    return server


@pytest.fixture
def admin(target):
    client = redis.Redis(
        port=target.port, username="custody-admin", password=ADMIN_PASSWORD, decode_responses=True
    )
    yield client
    client.close()


def _expiry():
    return datetime.now(UTC) + timedelta(minutes=10)


def _connect(secret: dict) -> redis.Connection:
    """One connection without redis-py's reconnects, so a killed connection shows."""
    connection = redis.Connection(
        host=secret["host"],
        port=secret["port"],
        username=secret["username"],
        password=secret["password"],
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )
    connection.connect()
    return connection


def _run(connection: redis.Connection, *args):
    connection.send_command(*args)
    return connection.read_response()


def test_it_makes_a_user_limited_to_its_keys_and_commands(target):
    broker = get_broker("redis")
    issued = broker.create(CONFIG, name="custody-g1", expires_at=_expiry())
    secret = issued.secret
    assert secret["username"] == "custody-g1"
    assert secret["port"] == target.port
    client = redis.Redis.from_url(secret["url"], decode_responses=True)
    assert client.set("payments:1", "paid")
    assert client.get("payments:1") == "paid"
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.get("salaries:1")  # outside its key patterns
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.delete("payments:1")  # outside its commands
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()  # @dangerous is always removed
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command("ACL", "SETUSER", "custody-g1", "resetkeys", "~*")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.publish("payments.events", "x")  # no channels configured
    assert broker.exists(CONFIG, name="custody-g1")
    assert issued.details["key_patterns"] == ["payments:*"]
    assert secret["password"] not in repr(issued.details)
    client.close()
    broker.destroy(CONFIG, name="custody-g1")


def test_it_gives_channels_when_configured(target):
    config = {**CONFIG, "commands": ["+@read", "+publish"], "channels": ["payments.*"]}
    secret = get_broker("redis").create(config, name="custody-g2", expires_at=_expiry()).secret
    client = redis.Redis.from_url(secret["url"])
    assert client.publish("payments.events", "x") == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.publish("salaries.events", "x")
    client.close()
    get_broker("redis").destroy(config, name="custody-g2")


def test_it_never_shows_the_password_to_monitor_or_slowlog(target, admin):
    admin.config_set("slowlog-log-slower-than", 0)
    admin.slowlog_reset()
    monitor = _connect(
        {
            "host": "127.0.0.1",
            "port": target.port,
            "username": "custody-admin",
            "password": ADMIN_PASSWORD,
        }
    )
    assert _run(monitor, "MONITOR") in (b"OK", "OK")
    secret = get_broker("redis").create(CONFIG, name="custody-g3", expires_at=_expiry()).secret
    admin.echo("end-of-test-marker")
    seen = []
    while b"end-of-test-marker" not in (seen[-1] if seen else b""):
        seen.append(monitor.read_response())
    slowlog = repr(admin.slowlog_get(128))
    monitor.disconnect()
    admin.config_set("slowlog-log-slower-than", 10000)
    assert secret["password"] not in repr(seen)
    assert secret["password"] not in slowlog
    get_broker("redis").destroy(CONFIG, name="custody-g3")


def test_it_destroys_the_user_and_kills_its_open_clients(target):
    broker = get_broker("redis")
    secret = broker.create(CONFIG, name="custody-g4", expires_at=_expiry()).secret
    open_client = _connect(secret)
    assert _run(open_client, "SET", "payments:2", "x") in (b"OK", "OK")

    broker.destroy(CONFIG, name="custody-g4")

    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        _run(open_client, "GET", "payments:2")  # the open connection was closed
    with pytest.raises(redis.AuthenticationError):
        _connect(secret)  # and a new login is refused
    assert not broker.exists(CONFIG, name="custody-g4")
    broker.destroy(CONFIG, name="custody-g4")  # destroying twice is fine


def test_it_makes_the_same_name_afresh_when_create_is_retried(target):
    broker = get_broker("redis")
    first = broker.create(CONFIG, name="custody-g5", expires_at=_expiry()).secret
    second = broker.create(CONFIG, name="custody-g5", expires_at=_expiry()).secret
    with pytest.raises(redis.AuthenticationError):
        _connect(first)  # the lost answer's password no longer works
    _connect(second).disconnect()
    broker.destroy(CONFIG, name="custody-g5")


def test_it_is_unavailable_while_the_server_is_down(target):
    target.stop()
    broker = get_broker("redis")
    with pytest.raises(BrokerUnavailable, match="cannot be reached"):
        broker.create(CONFIG, name="custody-g6", expires_at=_expiry())
    with pytest.raises(BrokerUnavailable):
        broker.destroy(CONFIG, name="custody-g6")
    with pytest.raises(BrokerUnavailable):
        broker.exists(CONFIG, name="custody-g6")


def test_a_wrong_admin_password_is_an_error_that_does_not_show_it(target, monkeypatch):
    monkeypatch.setenv(
        "CUSTODY_BROKER_CACHE_URL", f"redis://custody-admin:wrong-secret@127.0.0.1:{target.port}/0"
    )
    with pytest.raises(BrokerError, match="refused Custody's admin login") as refused:
        get_broker("redis").destroy(CONFIG, name="custody-g7")
    assert not isinstance(refused.value, BrokerUnavailable)
    assert "wrong-secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**CONFIG, "key_patterns": []}, "key_patterns must be a non-empty list"),
        ({**CONFIG, "key_patterns": ["payments: *"]}, "not a key or channel pattern"),
        ({**CONFIG, "key_patterns": "payments:*"}, "key_patterns must be a non-empty list"),
        ({**CONFIG, "commands": ["read"]}, "not a command rule"),
        ({**CONFIG, "commands": ["+get; flushall"]}, "not a command rule"),
        ({**CONFIG, "commands": ["+@all"]}, "manage the server"),
        ({**CONFIG, "commands": ["+ACL|setuser"]}, "manage the server"),
        ({**CONFIG, "commands": ["-@write"]}, "must allow something"),
        ({**CONFIG, "channels": ["a b"]}, "not a key or channel pattern"),
        ({**CONFIG, "channels": None}, "channels must be a list of strings"),
        ({**CONFIG, "target": "Cache"}, "target must be"),
        ({**CONFIG, "db": 3}, "Unknown field"),
        ({**CONFIG, "target": "nowhere"}, "CUSTODY_BROKER_NOWHERE_URL"),
    ],
)
def test_it_refuses_a_bad_configuration(target, config, message):
    with pytest.raises(BrokerConfigError, match=message):
        get_broker("redis").validate_config(config)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0",
        "redis://custody-admin:pw@127.0.0.1:6379/payments",
        "redis://custody-admin:pw@127.0.0.1:port/0",
    ],
)
def test_it_refuses_an_admin_url_that_is_not_redis(target, monkeypatch, url):
    monkeypatch.setenv("CUSTODY_BROKER_CACHE_URL", url)
    with pytest.raises(BrokerConfigError, match="must be a redis:// or rediss:// URL") as refused:
        get_broker("redis").validate_config(CONFIG)
    assert "pw" not in str(refused.value)


def test_it_normalises_a_good_configuration(target):
    assert get_broker("redis").validate_config({**CONFIG, "commands": ["+@READ", "+GET"]}) == {
        **CONFIG,
        "commands": ["+@read", "+get"],
        "channels": [],
    }


def test_a_user_saved_to_the_acl_file_while_live_does_not_come_back_after_destroy(monkeypatch):
    acl_file = Path(tempfile.mkdtemp(prefix="redis-acl-")) / "users.acl"
    acl_file.write_text(f"user custody-admin on >{ADMIN_PASSWORD} ~* &* +@all\nuser default off\n")
    server = RedisServer("--aclfile", str(acl_file))
    try:
        monkeypatch.setenv(
            "CUSTODY_BROKER_CACHE_URL",
            f"redis://custody-admin:{ADMIN_PASSWORD}@127.0.0.1:{server.port}/0",
        )
        broker = get_broker("redis")
        secret = broker.create(CONFIG, name="custody-g8", expires_at=_expiry()).secret
        admin = redis.Redis(port=server.port, username="custody-admin", password=ADMIN_PASSWORD)
        admin.acl_save()  # an operator saves the ACLs while the credential is live
        admin.close()

        broker.destroy(CONFIG, name="custody-g8")
        server.stop()
        server.start()

        assert not broker.exists(CONFIG, name="custody-g8")
        with pytest.raises(redis.AuthenticationError):
            _connect(secret)
    finally:
        server.stop()
