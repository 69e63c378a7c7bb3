"""Settings for the benchmark server: production settings plus a bench-only URLconf.

Everything else (database, cache, broker, secret) comes from the environment exactly as in
production; `bench/api_bench.py` sets those variables before it starts gunicorn.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"

# Statements per request, read by the benchmark from each answer's X-Bench-SQL header.
MIDDLEWARE = ["bench.sql_count.SqlCountMiddleware", *MIDDLEWARE]  # noqa: F405
