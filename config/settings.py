"""Custody settings: every value comes from the environment, with embedded defaults for development.

With no variables set (and DEBUG=true, as `make run` sets it) Custody runs on SQLite and a Celery
broker that needs no server, both under `var/`. Production sets DATABASE_URL, CELERY_BROKER_URL,
SECRET_KEY and ALLOWED_HOSTS; see the README's configuration table.
"""

import importlib.metadata
import ipaddress
import secrets
import tomllib
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from core.client_ip import parse_trusted_proxies
from core.env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("CUSTODY_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        if len(key) < 32:
            raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long.")
        return key
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (or give SECRET_KEY_FILE with its path)."
        )
    # Development only: generate once and keep it under var/ so sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
# Previous SECRET_KEYs (comma-separated), kept while rotating: sessions, signed values and the
# stored token-signing keys (approvals/tokens.py) still decrypt under them.
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS", [])

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS must be set when DEBUG is off (comma-separated host names)."
    )
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# A refused form says why in a sentence (JSON under /api/), not Django's developer page.
CSRF_FAILURE_VIEW = "frontend.errors.csrf_failure"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "django_celery_beat",
    "django_htmx",
    "axes",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "allauth.mfa",
    "audit",
    "agents",
    "approvals",
    "ssf",
    "brokers",
    "frontend",
]

MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",  # first: every line of the request names its id
    "core.metrics.MetricsMiddleware",  # next, so its latency covers every other middleware
    "core.middleware.ForwardedProtoMiddleware",  # the scheme, before anything reads it
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.BodySizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.middleware.LogPersonMiddleware",  # the signed-in person, on every log line after
    "allauth.account.middleware.AccountMiddleware",  # allauth's sign-in stages (second factor)
    "agents.acting.ActingPersonMiddleware",  # receivers auditing approval rights read it
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "core.middleware.ContentSecurityPolicyMiddleware",
    "core.middleware.PersonTimeZoneMiddleware",
    # Last, so its lockout page replaces whatever a locked-out sign-in view answered.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "frontend.context_processors.pending_for_me",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'custody.sqlite3'}")
try:
    _database = dj_database_url.parse(DATABASE_URL, conn_max_age=60)
except Exception as exc:  # dj-database-url raises bare ValueError/KeyError on bad schemes
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL Custody understands: {exc}")
if _database["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one file: take the write lock at BEGIN so no transaction
    # fails half-way with "database is locked", and wait for it instead of erroring at once.
    _database["CONN_MAX_AGE"] = 0
    _database["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _database["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
_database["CONN_HEALTH_CHECKS"] = True
DATABASES = {"default": _database}
# PostgreSQL: the hot paths' wide statements (authentication, introspection, a submission's
# decision) are prepared once per connection (core/prepared.py). Set false behind a pooler that
# moves transactions between server sessions (PgBouncer's pool_mode = transaction).
CUSTODY_DB_PREPARED_STATEMENTS = env_bool("CUSTODY_DB_PREPARED_STATEMENTS", True)
# A PostgreSQL read replica for the read-only pages (audit, posture); see core/replica.py. Unset:
# one database. Decisions, writes and anything about people's rights always use the primary.
DATABASE_REPLICA_URL = env_str("DATABASE_REPLICA_URL")
DATABASE_ROUTERS: list[str] = []
if DATABASE_REPLICA_URL:
    try:
        _replica = dj_database_url.parse(DATABASE_REPLICA_URL, conn_max_age=60)
    except Exception as exc:
        raise ImproperlyConfigured(
            f"DATABASE_REPLICA_URL is not a database URL Custody understands: {exc}"
        )
    if _replica["ENGINE"] != _database["ENGINE"] or "postgresql" not in _replica["ENGINE"]:
        raise ImproperlyConfigured(
            "DATABASE_REPLICA_URL must name a PostgreSQL replica of DATABASE_URL's PostgreSQL."
        )
    _replica["CONN_HEALTH_CHECKS"] = True
    # Tests read the primary's test database through it (the replica has no test database).
    _replica["TEST"] = {"MIRROR": "default"}
    DATABASES["replica"] = _replica
    DATABASE_ROUTERS = ["core.replica.ReplicaRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (JWKS documents, rate limits of audited auth failures) -----------------------------
CACHE_URL = env_str("CACHE_URL")
if CACHE_URL:
    if not CACHE_URL.startswith(("redis://", "rediss://")):
        raise ImproperlyConfigured("CACHE_URL must be a redis:// or rediss:// URL.")
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            # The cache is an optimisation: with Redis unreachable, callers fall back within a
            # second (agents/jwks.py, audit record_throttled) instead of hanging a request.
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth -----------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    # First: refuses every password check (login, admin login, step-up) while locked out.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
GUARDIAN_ANONYMOUS_USER_NAME = None  # no anonymous user row: anonymous callers see nothing
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# --- People's sign-in: local password, single sign-on (OIDC), second factor (django-allauth) ----
# README "Security" → "Sign-in": the sign-in page is allauth's, at /login/; nobody signs up there.
ACCOUNT_ADAPTER = "frontend.sso.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "frontend.sso.SocialAccountAdapter"
ACCOUNT_FORMS = {"login": "frontend.sso.LoginForm"}
ACCOUNT_LOGIN_METHODS = {"username"}
ACCOUNT_SIGNUP_FIELDS = ["username*", "email", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_SESSION_REMEMBER = True  # the session ends with SESSION_COOKIE_AGE, as before
ACCOUNT_LOGOUT_REDIRECT_URL = "/login/"
# django-axes throttles passwords (below); allauth's own limit on failed sign-ins stays, set above
# axes' so that axes answers first, because it also bounds guesses at second-factor codes.
ACCOUNT_RATE_LIMITS = {"login_failed": "30/m/ip,10/5m/key"}
# Single sign-on: one OpenID Connect provider, configured here when CUSTODY_OIDC_SERVER_URL is set.
CUSTODY_OIDC_SERVER_URL = env_str("CUSTODY_OIDC_SERVER_URL")
SOCIALACCOUNT_PROVIDERS: dict = {"openid_connect": {"APPS": []}}
if CUSTODY_OIDC_SERVER_URL:
    _oidc_client_id = env_str("CUSTODY_OIDC_CLIENT_ID")
    _oidc_secret = env_str("CUSTODY_OIDC_CLIENT_SECRET")
    if not _oidc_client_id or not _oidc_secret:
        raise ImproperlyConfigured(
            "CUSTODY_OIDC_SERVER_URL is set, so CUSTODY_OIDC_CLIENT_ID and "
            "CUSTODY_OIDC_CLIENT_SECRET (or CUSTODY_OIDC_CLIENT_SECRET_FILE) must be set too."
        )
    SOCIALACCOUNT_PROVIDERS["openid_connect"]["APPS"].append(
        {
            "provider_id": "sso",
            "name": env_str("CUSTODY_OIDC_NAME", "single sign-on"),
            "client_id": _oidc_client_id,
            "secret": _oidc_secret,
            "settings": {
                "server_url": CUSTODY_OIDC_SERVER_URL,
                "oauth_pkce_enabled": True,
                # The provider decides whether its session is fresh enough; ask for a sign-in.
                "auth_params": {"prompt": env_str("CUSTODY_OIDC_PROMPT", "login")},
            },
        }
    )
# A person signing in through SSO is matched to a Custody account by an explicit link, else by
# the provider's *verified* email naming exactly one active person who is not staff (admins link
# explicitly, from their Security page). Someone unknown is refused, unless this is on: then an
# account is created for them with no rights at all (no staff, no groups, approves nothing).
CUSTODY_SSO_AUTO_SIGNUP = env_bool("CUSTODY_SSO_AUTO_SIGNUP", False)
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False  # frontend/sso.py decides the match, as above
SOCIALACCOUNT_EMAIL_VERIFICATION = "none"
SOCIALACCOUNT_LOGIN_ON_GET = False  # starting SSO is a POST with CSRF, never a plain link
SOCIALACCOUNT_STORE_TOKENS = False  # Custody needs who the person is, not their provider tokens
# Second factor: an authenticator app (TOTP) and passkeys (WebAuthn), with recovery codes.
MFA_SUPPORTED_TYPES = ["totp", "webauthn", "recovery_codes"]
MFA_PASSKEY_LOGIN_ENABLED = False  # a passkey is a second factor here, not a password
MFA_TOTP_ISSUER = "Custody"
MFA_FORMS = {  # a malformed passkey answer is a wrong one (400), never a 500
    "authenticate_webauthn": "frontend.forms_mfa.PasskeyForm",
    "reauthenticate_webauthn": "frontend.forms_mfa.PasskeyReauthenticateForm",
}
# WebAuthn over plain http is for localhost development and tests only.
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = env_bool("CUSTODY_WEBAUTHN_ALLOW_HTTP", DEBUG)
# When on, approving a critical request needs a second factor confirmed within the step-up
# window; a person without one is told to set one up.
CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR = env_bool(
    "CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR", False
)

# --- Throttling password guesses (django-axes) --------------------------------------------------
# The proxies whose X-Forwarded-For is believed (IPs or CIDR networks); none means REMOTE_ADDR is
# the client. gunicorn.conf.py gives gunicorn's forwarded_allow_ips the same list.
TRUSTED_PROXIES = [str(net) for net in parse_trusted_proxies(env_list("TRUSTED_PROXIES", []))]
# After this many failed passwords for one account, or from one client address, within the
# cool-off, every password check for it is refused (429) until the cool-off has passed.
AXES_FAILURE_LIMIT = env_int("CUSTODY_PASSWORD_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("CUSTODY_PASSWORD_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one locks
AXES_CLIENT_IP_CALLABLE = "core.client_ip.client_ip"
AXES_LOCKOUT_CALLABLE = "frontend.auth.lockout_response"
# A success clears only that account's failures (frontend.auth), never its address's: logging in
# to one's own account must not wipe the count of guesses at someone else's.
AXES_RESET_ON_SUCCESS = False
AXES_DISABLE_ACCESS_LOG = True  # axes keeps the counters; evidence goes to the audit log
AXES_VERBOSE = False

# --- Security defaults ----------------------------------------------------------------------
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600, minimum=60)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Probes and scrapers talk to the process over plain HTTP on the private network.
SECURE_REDIRECT_EXEMPT = [r"^(healthz|readyz|version|metrics)$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 3600, minimum=0)
# X-Forwarded-Proto is believed from TRUSTED_PROXIES only (core.middleware's
# ForwardedProtoMiddleware), never from whoever sends it: behind a TLS terminator HSTS is then
# sent and SECURE_SSL_REDIRECT does not loop.
TRUST_X_FORWARDED_PROTO = env_bool("TRUST_X_FORWARDED_PROTO", False)
if TRUST_X_FORWARDED_PROTO and not TRUSTED_PROXIES:
    raise ImproperlyConfigured(
        "TRUST_X_FORWARDED_PROTO is on but TRUSTED_PROXIES is empty: list the proxies (IPs or "
        "CIDR networks) whose X-Forwarded-Proto is believed."
    )
# Bodies past this size are refused with 413 before any parsing (agents send small JSON).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 64 * 1024, minimum=1024)

# --- I18N / static --------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "frontend" / "static"]

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["agents.authentication.WorkloadIdentityAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
    ],
    "EXCEPTION_HANDLER": "core.api_errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "core.openapi.CustodyAutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Custody API",
    "DESCRIPTION": "Workload-identity authenticated API for AI agents: privilege requests, "
    "grants, short-lived tokens, delegation and introspection.",
    "VERSION": "1",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Tags from the path after /api/v1/ (requests, grants, …), not "api".
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Enums named after what they are, not after a hash of their values.
    "ENUM_NAME_OVERRIDES": {
        "AccessRequestStatusEnum": "approvals.models.AccessRequest.Status",
        "OAuthErrorCodeEnum": "core.api_errors.OAUTH_ERROR_CODES",
    },
    # Swagger UI and ReDoc from our own static files (the sidecar), not a CDN's @latest.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No badge fetched from validator.swagger.io: the docs page talks to this server only.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The transport is config/file_broker.py's (config/celery.py maps the scheme to it).
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    # Producers and consumers must read and write the same folder (see shared/NOTES.md), and
    # the processed folder must be on its filesystem: a reader claims a message by renaming it.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        # Poll the folder often: tasks start sooner and workers stop promptly on Ctrl-C.
        "polling_interval": 0.25,
        "store_processed": False,
    }
elif CELERY_BROKER_URL.startswith("sentinel://"):
    # Redis under Sentinel (docs/scaling.md): the URL lists the sentinels
    # (sentinel://s1:26379;sentinel://s2:26379;...); kombu asks them for the master of this name
    # and follows a failover.
    _sentinel_master = env_str("CELERY_BROKER_SENTINEL_MASTER")
    if not _sentinel_master:
        raise ImproperlyConfigured(
            "CELERY_BROKER_URL names Redis sentinels: set CELERY_BROKER_SENTINEL_MASTER to the "
            "name they monitor the broker's master under (`sentinel monitor <name> ...`)."
        )
    CELERY_BROKER_TRANSPORT_OPTIONS = {"master_name": _sentinel_master}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Custody's entries are re-enabled and repaired (and that audited) each time beat starts.
CELERY_BEAT_SCHEDULER = "audit.beat:CustodyScheduler"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A broker restart must not stop time: workers and beat retry a lost broker forever (every
# second, config/celery.py), never giving up after Celery's default 100 attempts.
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# A late-acknowledged task running when the connection drops can no longer be acknowledged and
# is delivered again: stop it rather than finish it twice (every task here is idempotent).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Keep a worker's database connection across tasks (Celery otherwise opens one per task, which
# alone caps expiry at a few dozen grants a second); config/celery.py recycles stale ones.
CELERY_DB_REUSE_MAX = 1000

# --- Slack ----------------------------------------------------------------------------------
SLACK_BOT_TOKEN = env_str("SLACK_BOT_TOKEN")
SLACK_SIGNING_SECRET = env_str("SLACK_SIGNING_SECRET")
SLACK_API_URL = env_str("SLACK_API_URL", "https://slack.com/api/")
if not SLACK_API_URL.endswith("/"):
    SLACK_API_URL += "/"  # slack-sdk joins method names onto it

# --- Custody --------------------------------------------------------------------------------
# The `iss` of every token Custody signs, and the audience agents' SVIDs must name.
CUSTODY_ISSUER = env_str("CUSTODY_ISSUER", "http://127.0.0.1:8000")
CUSTODY_AUDIENCE = env_str("CUSTODY_AUDIENCE", "custody")
# A delegation actor token names this audience and never CUSTODY_AUDIENCE: it cannot log in, and
# a login SVID is never accepted as an actor token (DESIGN invariant 10).
CUSTODY_DELEGATION_AUDIENCE = env_str(
    "CUSTODY_DELEGATION_AUDIENCE", f"{CUSTODY_AUDIENCE}-delegation"
)
if CUSTODY_DELEGATION_AUDIENCE == CUSTODY_AUDIENCE:
    raise ImproperlyConfigured(
        "CUSTODY_DELEGATION_AUDIENCE must differ from CUSTODY_AUDIENCE: an actor token must never "
        "be a login."
    )
# The longest lifetime (exp - iat) Custody accepts of a login SVID, and of an actor token (which
# is also accepted only once).
CUSTODY_LOGIN_TOKEN_MAX_SECONDS = env_int("CUSTODY_LOGIN_TOKEN_MAX_SECONDS", 3600, minimum=60)
CUSTODY_DELEGATION_TOKEN_MAX_SECONDS = env_int(
    "CUSTODY_DELEGATION_TOKEN_MAX_SECONDS", 300, minimum=10
)
if CUSTODY_DELEGATION_TOKEN_MAX_SECONDS > 900:
    raise ImproperlyConfigured(
        "CUSTODY_DELEGATION_TOKEN_MAX_SECONDS must be at most 900 (an actor token is short-lived)."
    )
# The local development trust domain whose key `mint_svid` signs with (never for production).
CUSTODY_DEV_TRUST_DOMAIN = env_str("CUSTODY_DEV_TRUST_DOMAIN", "dev.custody.internal")
CUSTODY_DEV_KEY_FILE = VAR_DIR / "dev_trust_domain_key.pem"
CUSTODY_JWT_LEEWAY_SECONDS = 60
CUSTODY_JWKS_CACHE_SECONDS = env_int("CUSTODY_JWKS_CACHE_SECONDS", 300, minimum=0)
# PEM CA bundle that trust domains' https jwks_url certificates are checked against (an internal
# PKI); empty means the system's trust store.
CUSTODY_JWKS_CA_FILE = env_str("CUSTODY_JWKS_CA_FILE") or ""
# At most this many rejected logins per reason per minute are written to the audit log.
CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE = env_int(
    "CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE", 20, minimum=0
)

# --- Operating ------------------------------------------------------------------------------
# /metrics answers a bearer of CUSTODY_METRICS_TOKEN, or a direct peer in CUSTODY_METRICS_NETWORKS
# (loopback by default). The proxy in deploy/ never forwards /metrics.
CUSTODY_METRICS_TOKEN = env_str("CUSTODY_METRICS_TOKEN")


def _networks(name: str, default: list[str]) -> list[str]:
    try:
        return [str(ipaddress.ip_network(net, strict=False)) for net in env_list(name, default)]
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc} (give networks such as 10.0.0.0/8).") from exc


CUSTODY_METRICS_NETWORKS = _networks("CUSTODY_METRICS_NETWORKS", ["127.0.0.0/8", "::1/128"])
# A Celery worker serves its own counters on this port (0: off), for a scraper on its network.
CUSTODY_WORKER_METRICS_PORT = env_int("CUSTODY_WORKER_METRICS_PORT", 0, minimum=0)
CUSTODY_WORKER_METRICS_ADDRESS = env_str(
    "CUSTODY_WORKER_METRICS_ADDRESS",
    "0.0.0.0",  # noqa: S104 - a container scraped on its own network; set 127.0.0.1 on a host
)


def _version() -> str:
    try:
        return importlib.metadata.version("custody")
    except importlib.metadata.PackageNotFoundError:  # run from the source tree (the image)
        with open(BASE_DIR / "pyproject.toml", "rb") as pyproject:
            return tomllib.load(pyproject)["project"]["version"]


CUSTODY_VERSION = _version()
# The source revision the image was built from (the build passes it), shown by /version.
CUSTODY_COMMIT = env_str("CUSTODY_COMMIT", "unknown")

# Logs: JSON lines (one object per line, for shippers) unless DEBUG, where people read them;
# CUSTODY_LOG_FORMAT=json|plain decides either way. Every line carries the request id and who and
# what it is about (core/log_context.py), in the web process and in the tasks a request enqueued.
CUSTODY_LOG_FORMAT = env_str("CUSTODY_LOG_FORMAT", "plain" if DEBUG else "json")
if CUSTODY_LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured("CUSTODY_LOG_FORMAT must be json or plain.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "core.log_context.PlainFormatter"},
        "json": {"()": "core.log_context.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": CUSTODY_LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
        # Each published audit checkpoint, as its JSON line, for log shippers to keep.
        "custody.audit.checkpoint": {"level": "INFO"},
    },
}
# Optional error reporting: only with SENTRY_DSN, and without people's data (no PII, no bodies).
SENTRY_DSN = env_str("SENTRY_DSN", "")
if SENTRY_DSN:
    import sentry_sdk

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=env_str("SENTRY_ENVIRONMENT", "production"),
        send_default_pii=False,
        max_request_body_size="never",
        traces_sample_rate=0.0,
    )
# Access tokens are short and refreshable while the grant lives (never beyond 15 minutes).
CUSTODY_ACCESS_TOKEN_SECONDS = env_int("CUSTODY_ACCESS_TOKEN_SECONDS", 300, minimum=30)
if CUSTODY_ACCESS_TOKEN_SECONDS > 900:
    raise ImproperlyConfigured("CUSTODY_ACCESS_TOKEN_SECONDS must be at most 900 (15 minutes).")
CUSTODY_MAX_WAIT_SECONDS = 30
# Flood control: an agent with this many requests waiting for people gets 429 for one more.
CUSTODY_MAX_PENDING_PER_AGENT = env_int("CUSTODY_MAX_PENDING_PER_AGENT", 20, minimum=1)
# Drift: more than BURST tool calls under one grant within WINDOW seconds is a burst.
CUSTODY_DRIFT_BURST = env_int("CUSTODY_DRIFT_BURST", 30, minimum=1)
CUSTODY_DRIFT_WINDOW = env_int("CUSTODY_DRIFT_WINDOW", 60, minimum=1)
if env_str("CUSTODY_DRIFT_POLICY_FILE"):
    # Ignoring it would leave someone believing their file decides drift.
    raise ImproperlyConfigured(
        "CUSTODY_DRIFT_POLICY_FILE is no longer read: drift policies are edited in Django admin "
        "(Policies, kind Drift), validated, versioned and audited. Put the file's text there "
        "and unset the variable."
    )
# The inbox's bulk deny: at most this many requests per click (each is its own decision).
CUSTODY_BULK_DENY_MAX = env_int("CUSTODY_BULK_DENY_MAX", 500, minimum=1)
# Back-to-back requests cannot renew a privilege forever: within any window of this many
# seconds, an agent gets a privilege automatically for at most FACTOR × its maximum duration
# (counting what it held and still holds); beyond that people decide. FACTOR 0 turns it off.
CUSTODY_CUMULATIVE_WINDOW_SECONDS = env_int("CUSTODY_CUMULATIVE_WINDOW_SECONDS", 86400, minimum=60)
CUSTODY_CUMULATIVE_FACTOR = env_int("CUSTODY_CUMULATIVE_FACTOR", 4, minimum=0)
# Policy changes with a safety net: admin shows what a change would have decided on this many
# recent requests before it goes live; with TWO_PERSON a change waits for another admin.
CUSTODY_POLICY_SIMULATION_REQUESTS = env_int("CUSTODY_POLICY_SIMULATION_REQUESTS", 1000, minimum=0)
CUSTODY_POLICY_TWO_PERSON = env_bool("CUSTODY_POLICY_TWO_PERSON", False)

# --- Audit checkpoints (README: "Audit checkpoints") ----------------------------------------------
# Every CUSTODY_CHECKPOINT_SECONDS a worker signs (sequence, hash) of the chain head with an
# Ed25519 key the database never holds, and publishes it to a JSON Lines file, the log and
# /api/v1/audit/checkpoints/latest; verify_audit checks the chain against those signatures.
# The key: CUSTODY_CHECKPOINT_KEY (or _FILE), a PEM Ed25519 private key; without one it is
# derived from SECRET_KEY with HKDF, which is equally outside the database and always present.
CUSTODY_CHECKPOINT_KEY = env_str("CUSTODY_CHECKPOINT_KEY")
# Beat walks the chain from the last signed checkpoint every 5 minutes, and the whole chain every
# CUSTODY_AUDIT_FULL_VERIFY_SECONDS (only a full walk sees an edit before the last checkpoint
# that left every later hash alone). A walk that stops reporting progress for
# CUSTODY_CHAIN_CHECK_STALE_SECONDS (its worker died) no longer blocks "Verify now".
CUSTODY_AUDIT_FULL_VERIFY_SECONDS = env_int(
    "CUSTODY_AUDIT_FULL_VERIFY_SECONDS", 86400, minimum=3600
)
CUSTODY_CHAIN_CHECK_STALE_SECONDS = env_int("CUSTODY_CHAIN_CHECK_STALE_SECONDS", 600, minimum=30)
# The audit page turns a time range into a sequence range (fast at 10M events): event times
# rise with sequences up to the app servers' clock skew, which must stay below this margin.
CUSTODY_AUDIT_CLOCK_SKEW_SECONDS = env_int("CUSTODY_AUDIT_CLOCK_SKEW_SECONDS", 60, minimum=0)
# PostgreSQL: how often beat checks that a whole partition of the evidence log is ready ahead of
# the chain head (docs/audit-at-scale.md, "Partitioning"); an append never waits for it.
CUSTODY_AUDIT_PARTITION_SECONDS = env_int("CUSTODY_AUDIT_PARTITION_SECONDS", 600, minimum=10)
if CUSTODY_CHECKPOINT_KEY:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        _checkpoint_key = load_pem_private_key(CUSTODY_CHECKPOINT_KEY.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "CUSTODY_CHECKPOINT_KEY must be an unencrypted PEM Ed25519 private key "
            "(openssl genpkey -algorithm ed25519)."
        ) from exc
    if not isinstance(_checkpoint_key, Ed25519PrivateKey):
        raise ImproperlyConfigured("CUSTODY_CHECKPOINT_KEY must be an Ed25519 private key.")
CUSTODY_CHECKPOINT_FILE = Path(
    env_str("CUSTODY_CHECKPOINT_FILE", str(VAR_DIR / "audit-checkpoints.jsonl"))
)
CUSTODY_CHECKPOINT_SECONDS = env_int("CUSTODY_CHECKPOINT_SECONDS", 60, minimum=1)
# Public keys (base64url, raw 32 bytes) of retired checkpoint keys: old checkpoints still verify.
CUSTODY_CHECKPOINT_PREVIOUS_PUBLIC_KEYS = env_list("CUSTODY_CHECKPOINT_PREVIOUS_PUBLIC_KEYS", [])

# --- Time: expiry, deadlines, escalation ---------------------------------------------------------
# The sweep ends any grant or request whose time has passed, whatever happened to its ETA task.
CUSTODY_SWEEP_SECONDS = env_int("CUSTODY_SWEEP_SECONDS", 10, minimum=1)
# /readyz is unready when beat has dispatched nothing for this long (it sends the sweeps every
# CUSTODY_SWEEP_SECONDS; django-celery-beat records a dispatch at least every 3 minutes).
CUSTODY_BEAT_HEARTBEAT_SECONDS = env_int("CUSTODY_BEAT_HEARTBEAT_SECONDS", 600, minimum=10)
# Expiry tasks are enqueued with an ETA only when due within this horizon; a periodic task
# enqueues the later ones as they come into range. Workers hold ETA tasks in memory, and Redis
# redelivers any unacknowledged message after the visibility timeout: keeping every ETA inside
# the horizon, and the timeout above it, means no ETA task is ever redelivered early (run twice)
# and a long grant (up to the privilege maximum, days) is never lost in a worker's memory.
CUSTODY_ETA_HORIZON_SECONDS = env_int("CUSTODY_ETA_HORIZON_SECONDS", 3600, minimum=60)
CUSTODY_EXPIRY_NOTICE_SECONDS = 600
# --- An agent's life: orphans and dormancy (invariant 13) --------------------------------------
# An agent whose sponsor can no longer sign in (or whose team emptied) is suspended after this
# many days unless someone from its team takes ownership.
CUSTODY_ORPHAN_GRACE_DAYS = env_int("CUSTODY_ORPHAN_GRACE_DAYS", 7, minimum=0)
# Not authenticated for this many days: flagged dormant, its sponsor told; after the second, it
# is suspended.
CUSTODY_DORMANT_AFTER_DAYS = env_int("CUSTODY_DORMANT_AFTER_DAYS", 30, minimum=1)
CUSTODY_DORMANT_SUSPEND_AFTER_DAYS = env_int("CUSTODY_DORMANT_SUSPEND_AFTER_DAYS", 90, minimum=1)
if CUSTODY_DORMANT_SUSPEND_AFTER_DAYS <= CUSTODY_DORMANT_AFTER_DAYS:
    raise ImproperlyConfigured(
        "CUSTODY_DORMANT_SUSPEND_AFTER_DAYS must be more than CUSTODY_DORMANT_AFTER_DAYS: an agent "
        "is flagged dormant (and its sponsor told) before it is suspended."
    )
CUSTODY_LIFECYCLE_SWEEP_SECONDS = env_int("CUSTODY_LIFECYCLE_SWEEP_SECONDS", 300, minimum=1)
# --- Reviews (recertification): each agent's sponsor attests it on a cadence set by the highest
# risk it is eligible for; an open review unanswered after the grace period gets the overdue action.
CUSTODY_REVIEW_DAYS_CRITICAL = env_int("CUSTODY_REVIEW_DAYS_CRITICAL", 30, minimum=1)
CUSTODY_REVIEW_DAYS_HIGH = env_int("CUSTODY_REVIEW_DAYS_HIGH", 90, minimum=1)
CUSTODY_REVIEW_DAYS_OTHER = env_int("CUSTODY_REVIEW_DAYS_OTHER", 180, minimum=1)
CUSTODY_REVIEW_GRACE_DAYS = env_int("CUSTODY_REVIEW_GRACE_DAYS", 14, minimum=1)
CUSTODY_REVIEW_OVERDUE_ACTION = env_str("CUSTODY_REVIEW_OVERDUE_ACTION", "suspend")
if CUSTODY_REVIEW_OVERDUE_ACTION not in ("suspend", "none"):
    raise ImproperlyConfigured(
        "CUSTODY_REVIEW_OVERDUE_ACTION is 'suspend' (the default) or 'none' (only record it)."
    )
CUSTODY_EXPIRY_NOTICE_MIN_GRANT_SECONDS = 3600
CELERY_BROKER_TRANSPORT_OPTIONS.update(
    {
        "visibility_timeout": CUSTODY_ETA_HORIZON_SECONDS + 3600,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    }
)
# Publishing must never hang a web request when the broker is down: fail fast, the sweep covers.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_TASK_DEFAULT_QUEUE = "expiry"
# The periodic sweeps have their own queue and worker (the notifications worker consumes it
# too): whatever befalls the worker holding the ETA tasks, something still ends grants on time.
_SWEEP_TASKS = (
    "approvals.tasks.sweep_expired_grants",
    "approvals.tasks.sweep_request_deadlines",
    "approvals.tasks.enqueue_upcoming_expiries",
    "agents.tasks.sweep_agent_lifecycle",
    "approvals.tasks.sweep_reviews",
    "ssf.tasks.sweep_security_events",
    "brokers.tasks.sweep_credentials",
)
CELERY_TASK_ROUTES = {
    **{task: {"queue": "sweeps"} for task in _SWEEP_TASKS},
    "approvals.tasks.notify_*": {"queue": "notifications"},
    "approvals.tasks.*": {"queue": "expiry"},
    "audit.tasks.*": {"queue": "notifications"},  # a long walk must never delay an expiry
    "ssf.tasks.*": {"queue": "notifications"},
    "brokers.tasks.*": {"queue": "notifications"},
}
CELERY_BEAT_SCHEDULE = {
    "verify-audit-chain": {"task": "audit.tasks.verify_audit_chain", "schedule": 300.0},
    "verify-audit-chain-full": {
        "task": "audit.tasks.verify_audit_chain_full",
        "schedule": float(CUSTODY_AUDIT_FULL_VERIFY_SECONDS),
    },
    "publish-audit-checkpoint": {
        "task": "audit.tasks.publish_audit_checkpoint",
        "schedule": float(CUSTODY_CHECKPOINT_SECONDS),
    },
    "keep-audit-partition-ahead": {
        "task": "audit.tasks.keep_audit_partition_ahead",
        "schedule": float(CUSTODY_AUDIT_PARTITION_SECONDS),
    },
    "sweep-expired-grants": {
        "task": "approvals.tasks.sweep_expired_grants",
        "schedule": float(CUSTODY_SWEEP_SECONDS),
    },
    "sweep-request-deadlines": {
        "task": "approvals.tasks.sweep_request_deadlines",
        "schedule": float(CUSTODY_SWEEP_SECONDS),
    },
    "sweep-agent-lifecycle": {
        "task": "agents.tasks.sweep_agent_lifecycle",
        "schedule": float(CUSTODY_LIFECYCLE_SWEEP_SECONDS),
    },
    "sweep-reviews": {
        "task": "approvals.tasks.sweep_reviews",
        "schedule": float(CUSTODY_LIFECYCLE_SWEEP_SECONDS),
    },
    "sweep-security-events": {
        "task": "ssf.tasks.sweep_security_events",
        "schedule": float(CUSTODY_SWEEP_SECONDS),
    },
    "enqueue-upcoming-expiries": {
        "task": "approvals.tasks.enqueue_upcoming_expiries",
        "schedule": float(max(CUSTODY_SWEEP_SECONDS, min(300, CUSTODY_ETA_HORIZON_SECONDS // 4))),
    },
}

# --- Shared Signals: revocation events pushed to (or polled by) resource servers -------------
# A push waits this long for the receiver; a failed push is retried with back-off (1, 2, 4 ...
# seconds, at most the maximum) and given up after so many attempts.
CUSTODY_SSF_PUSH_TIMEOUT_SECONDS = env_int("CUSTODY_SSF_PUSH_TIMEOUT_SECONDS", 5, minimum=1)
CUSTODY_SSF_PUSH_MAX_BACKOFF_SECONDS = env_int(
    "CUSTODY_SSF_PUSH_MAX_BACKOFF_SECONDS", 300, minimum=1
)
CUSTODY_SSF_PUSH_MAX_ATTEMPTS = env_int("CUSTODY_SSF_PUSH_MAX_ATTEMPTS", 20, minimum=1)

# --- Credential brokers: real credentials (PostgreSQL roles, ...) destroyed through an outbox --
# The beat sweep retries due destructions this often; a failed destroy backs off (1, 2, 4 ...
# seconds, at most the maximum) and logs an error from this many attempts on. A creation holds
# its row this long (no destroy may start meanwhile): longer than a broker's timeouts.
CUSTODY_BROKER_SWEEP_SECONDS = env_int("CUSTODY_BROKER_SWEEP_SECONDS", 10, minimum=1)
CUSTODY_BROKER_MAX_BACKOFF_SECONDS = env_int("CUSTODY_BROKER_MAX_BACKOFF_SECONDS", 30, minimum=1)
CUSTODY_BROKER_ALERT_ATTEMPTS = env_int("CUSTODY_BROKER_ALERT_ATTEMPTS", 5, minimum=1)
CUSTODY_BROKER_PROVISION_LEASE_SECONDS = env_int(
    "CUSTODY_BROKER_PROVISION_LEASE_SECONDS", 60, minimum=5
)
CUSTODY_BROKER_DESTROY_LEASE_SECONDS = env_int(
    "CUSTODY_BROKER_DESTROY_LEASE_SECONDS", 30, minimum=5
)
CELERY_BEAT_SCHEDULE["sweep-brokered-credentials"] = {
    "task": "brokers.tasks.sweep_credentials",
    "schedule": float(CUSTODY_BROKER_SWEEP_SECONDS),
}
# An RFC 8936 poll waits up to this long for an event unless `returnImmediately`.
CUSTODY_SSF_POLL_WAIT_SECONDS = env_int("CUSTODY_SSF_POLL_WAIT_SECONDS", 10, minimum=0)
CUSTODY_SSF_POLL_INTERVAL_SECONDS = 0.1

# --- Credential brokers: the webhook broker -----------------------------------------------------
# Its answers are credentials, so it talks https only; plain http is for DEBUG and tests.
CUSTODY_BROKER_WEBHOOK_ALLOW_HTTP = env_bool("CUSTODY_BROKER_WEBHOOK_ALLOW_HTTP", DEBUG)
# A PEM CA bundle for webhook receivers' certificates (an internal PKI); empty: the system's.
CUSTODY_BROKER_WEBHOOK_CA_FILE = env_str("CUSTODY_BROKER_WEBHOOK_CA_FILE") or ""

# --- Slack approvals ---------------------------------------------------------------------------
# Slack is on when a bot token and a signing secret are set; callbacks must come from this
# workspace and app. Requests above a privilege's `slack_max_risk` are approved in the browser.
SLACK_TEAM_ID = env_str("SLACK_TEAM_ID", "")
SLACK_APP_ID = env_str("SLACK_APP_ID", "")
# Where people reach the web UI (links in Slack messages).
CUSTODY_PUBLIC_URL = env_str("CUSTODY_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
