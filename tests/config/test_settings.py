"""Settings come from the environment; a misconfiguration stops Custody at start with a sentence
that names the variable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
STRONG_KEY = "k" * 50
# Everything Custody reads, so the caller's environment (CI's PostgreSQL, the suite's own
# test settings) cannot leak into a start-up under test.
CUSTODY_VARIABLES = {
    "DEBUG",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "DATABASE_URL",
    "DATABASE_REPLICA_URL",
    "CELERY_BROKER_URL",
    "CELERY_BROKER_SENTINEL_MASTER",
    "CACHE_URL",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "TRUST_X_FORWARDED_PROTO",
    "TRUSTED_PROXIES",
    "DJANGO_SETTINGS_MODULE",
    "SENTRY_DSN",
    "LOG_LEVEL",
}


def start(tmp_path: Path, code: str = "", **variables: str) -> subprocess.CompletedProcess:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in CUSTODY_VARIABLES and not name.startswith(("CUSTODY_", "SLACK_"))
    }
    env.update(DJANGO_SETTINGS_MODULE="config.settings", CUSTODY_VAR_DIR=str(tmp_path / "var"))
    env.update(variables)
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def refusal(result: subprocess.CompletedProcess) -> str:
    """The last line of the traceback: the sentence an operator reads."""
    assert result.returncode != 0, result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: "), result.stderr
    return last.removeprefix("django.core.exceptions.ImproperlyConfigured: ")


def test_it_needs_a_secret_key_when_debug_is_off(tmp_path):
    message = refusal(start(tmp_path, DEBUG="false", ALLOWED_HOSTS="custody.example.com"))
    assert message.startswith("SECRET_KEY must be set when DEBUG is off")


def test_it_refuses_a_short_secret_key(tmp_path):
    message = refusal(
        start(tmp_path, DEBUG="false", SECRET_KEY="short", ALLOWED_HOSTS="custody.example.com")
    )
    assert message == "SECRET_KEY must be at least 32 characters long."


def test_it_needs_allowed_hosts_when_debug_is_off(tmp_path):
    message = refusal(start(tmp_path, DEBUG="false", SECRET_KEY=STRONG_KEY))
    assert message.startswith("ALLOWED_HOSTS must be set when DEBUG is off")


def test_it_refuses_a_database_url_it_does_not_understand(tmp_path):
    message = refusal(start(tmp_path, DEBUG="true", DATABASE_URL="nonsense://x"))
    assert message.startswith("DATABASE_URL is not a database URL Custody understands")


def test_a_replica_must_be_postgresql_beside_a_postgresql_primary(tmp_path):
    message = refusal(
        start(tmp_path, DEBUG="true", DATABASE_REPLICA_URL="postgres://replica.example/custody")
    )  # the primary is the embedded SQLite
    assert message.startswith("DATABASE_REPLICA_URL must name a PostgreSQL replica")


def test_without_a_replica_there_is_one_database_and_no_router(tmp_path):
    code = (
        "from django.conf import settings; "
        "print(sorted(settings.DATABASES), settings.DATABASE_ROUTERS)"
    )
    result = start(tmp_path, code, DEBUG="true")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "['default'] []"


def test_a_replica_adds_its_alias_and_the_router(tmp_path):
    code = (
        "from django.conf import settings; "
        "print(settings.DATABASES['replica']['HOST'], settings.DATABASE_ROUTERS)"
    )
    result = start(
        tmp_path,
        code,
        DEBUG="true",
        DATABASE_URL="postgres://custody@primary.example/custody",
        DATABASE_REPLICA_URL="postgres://custody@replica.example/custody",
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip().splitlines()[-1] == "replica.example ['core.replica.ReplicaRouter']"
    )


@pytest.mark.parametrize(
    ("variable", "value", "sentence"),
    [
        ("DEBUG", "maybe", "DEBUG must be a boolean (true/false, 1/0), not 'maybe'."),
        ("CACHE_URL", "memcached://x", "CACHE_URL must be a redis:// or rediss:// URL."),
        (
            "CUSTODY_JWKS_CACHE_SECONDS",
            "soon",
            "CUSTODY_JWKS_CACHE_SECONDS must be a whole number, not 'soon'.",
        ),
    ],
)
def test_it_names_the_variable_that_is_malformed(tmp_path, variable, value, sentence):
    variables = {"DEBUG": "true", variable: value}
    assert refusal(start(tmp_path, **variables)) == sentence


def test_it_reads_the_secret_key_from_a_file(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text(STRONG_KEY + "\n")
    result = start(
        tmp_path,
        "from django.conf import settings as s; "
        "print(s.SECRET_KEY == 'k' * 50, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)",
        DEBUG="false",
        ALLOWED_HOSTS="custody.example.com",
        SECRET_KEY_FILE=str(key_file),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]


def test_it_names_a_secret_key_file_it_cannot_read(tmp_path):
    missing = tmp_path / "nowhere" / "secret_key"
    message = refusal(
        start(tmp_path, DEBUG="false", ALLOWED_HOSTS="x.example", SECRET_KEY_FILE=str(missing))
    )
    assert message.startswith(f"SECRET_KEY_FILE points at '{missing}', which cannot be read")


def test_it_starts_in_development_with_no_variables_at_all(tmp_path):
    result = start(
        tmp_path,
        "from django.conf import settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, s.SESSION_COOKIE_SECURE)",
        DEBUG="true",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.sqlite3", "filesystem://", "False"]
    assert (tmp_path / "var" / "secret_key").exists()  # generated once, kept for restarts


def test_it_runs_the_suite_with_production_cookie_settings():
    assert settings.DEBUG is False
    assert settings.SESSION_COOKIE_SECURE is True
    assert settings.CSRF_COOKIE_SECURE is True
    assert settings.SESSION_COOKIE_HTTPONLY is True


@pytest.mark.django_db
def test_it_sends_secure_cookies_when_debug_is_off(client, django_user_model):
    django_user_model.objects.create_user(username="alice", password="correct horse battery")
    page = client.get("/login/")
    assert page.status_code == 200
    assert page.cookies["csrftoken"]["secure"] is True
    signed_in = client.post("/login/", {"username": "alice", "password": "correct horse battery"})
    assert signed_in.status_code == 302
    assert signed_in.cookies["sessionid"]["secure"] is True
    assert signed_in.cookies["sessionid"]["httponly"] is True


def test_single_sign_on_comes_from_the_environment_with_its_secret_from_a_file(tmp_path):
    secret_file = tmp_path / "oidc_secret"
    secret_file.write_text("from-a-mounted-secret\n")
    result = start(
        tmp_path,
        "import json; from django.conf import settings as s; "
        "print(json.dumps([s.SOCIALACCOUNT_PROVIDERS, s.CUSTODY_SSO_AUTO_SIGNUP, "
        "s.CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR]))",
        DEBUG="true",
        CUSTODY_OIDC_SERVER_URL="https://login.example.com/oauth2/default",
        CUSTODY_OIDC_CLIENT_ID="custody-web",
        CUSTODY_OIDC_CLIENT_SECRET_FILE=str(secret_file),
        CUSTODY_OIDC_NAME="Okta",
        CUSTODY_SSO_AUTO_SIGNUP="true",
        CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR="true",
    )
    assert result.returncode == 0, result.stderr
    providers, auto_signup, requires_factor = json.loads(result.stdout)
    (app,) = providers["openid_connect"]["APPS"]
    assert (app["provider_id"], app["name"], app["client_id"], app["secret"]) == (
        "sso",
        "Okta",
        "custody-web",
        "from-a-mounted-secret",
    )
    assert app["settings"]["server_url"] == "https://login.example.com/oauth2/default"
    assert app["settings"]["oauth_pkce_enabled"] is True
    assert (auto_signup, requires_factor) == (True, True)


def test_without_sso_variables_there_is_no_sso_and_no_auto_signup(tmp_path):
    result = start(
        tmp_path,
        "from django.conf import settings as s; "
        "print(s.SOCIALACCOUNT_PROVIDERS['openid_connect']['APPS'], s.CUSTODY_SSO_AUTO_SIGNUP)",
        DEBUG="true",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "False"]


def test_single_sign_on_without_its_client_stops_at_start(tmp_path):
    message = refusal(
        start(tmp_path, DEBUG="true", CUSTODY_OIDC_SERVER_URL="https://login.example.com")
    )
    assert message.startswith(
        "CUSTODY_OIDC_SERVER_URL is set, so CUSTODY_OIDC_CLIENT_ID and CUSTODY_OIDC_CLIENT_SECRET"
    )


def test_the_retired_drift_policy_file_variable_stops_custody_at_start(tmp_path):
    # Drift policies moved into admin (Policy kind drift); a file nobody reads must not be
    # mistaken for the policy in force.
    message = refusal(
        start(tmp_path, DEBUG="true", CUSTODY_DRIFT_POLICY_FILE=str(tmp_path / "drift.cedar"))
    )
    assert message.startswith("CUSTODY_DRIFT_POLICY_FILE is no longer read: drift policies")


def test_it_refuses_to_trust_x_forwarded_proto_from_no_proxy_in_particular(tmp_path):
    message = refusal(start(tmp_path, DEBUG="true", TRUST_X_FORWARDED_PROTO="true"))
    assert message.startswith("TRUST_X_FORWARDED_PROTO is on but TRUSTED_PROXIES is empty")
