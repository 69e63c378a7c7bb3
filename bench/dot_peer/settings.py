"""django-oauth-toolkit as a resource server's authorization server would run it: Django's
`startproject` middleware, PostgreSQL, DEBUG off, and the same persistent-connection settings as
Custody (CONN_MAX_AGE 60, health checks on), so the two differ only in what they do per request.

DOT_PEER_DATABASE names its PostgreSQL database; SECRET_KEY comes from the environment."""

import os

DEBUG = False
SECRET_KEY = os.environ["SECRET_KEY"]
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
]
MIDDLEWARE = [
    "bench.sql_count.SqlCountMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "bench.dot_peer.urls"
WSGI_APPLICATION = "bench.dot_peer.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["DOT_PEER_DATABASE"],
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
OAUTH2_PROVIDER = {
    # `introspection` is the scope DOT's IntrospectTokenView requires of a resource server's
    # bearer token; `read` is what the introspected token carries.
    "SCOPES": {"read": "Reading scope", "introspection": "Introspect tokens"},
}
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
