# Custody's production image (see docker-compose.yml): the app, and a proxy stage that serves
# its static files. Runs from the source tree, as an unprivileged user.
# Base images by exact tag (README: "Reproducible installs"); a tag can be re-pushed, so pin the
# registry's digest too (`FROM python:3.11.14-slim-bookworm@sha256:…`) where you can read it.
FROM python:3.11.14-slim-bookworm AS app

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first, from the lock alone, so code changes reuse this layer: exactly the pinned
# versions, every file checked against its hash (pip and setuptools included; `make lock`).
COPY requirements/app.txt requirements/app.txt
RUN pip install --require-hashes -r requirements/app.txt

COPY . .
# Custody itself, without dependencies (all of them came from the lock) and without an isolated
# build environment (that would fetch setuptools unhashed): the locked setuptools builds it.
RUN pip install --no-deps --no-build-isolation . \
    && rm -rf build custody.egg-info
# A throwaway key: collectstatic needs settings, never a real secret baked into a layer.
RUN DEBUG=false ALLOWED_HOSTS=build CUSTODY_VAR_DIR=/tmp/build-var \
    SECRET_KEY=build-only-collectstatic-not-a-secret-0123456789 \
    python manage.py collectstatic --noinput \
    && rm -rf /tmp/build-var

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin custody \
    && mkdir -p /var/lib/custody \
    && chown custody /var/lib/custody
# PROMETHEUS_MULTIPROC_DIR: gunicorn's workers (and a worker's children) add up in one /metrics.
ENV DJANGO_SETTINGS_MODULE=config.settings \
    CUSTODY_VAR_DIR=/var/lib/custody \
    PROMETHEUS_MULTIPROC_DIR=/tmp/custody-metrics \
    PYTHONPATH=/app
USER custody

EXPOSE 8000
# Liveness: /healthz answers (Host: the first ALLOWED_HOSTS name). Readiness is /readyz.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=5 \
    CMD ["python", "deploy/healthcheck.py", "web"]
# gunicorn.conf.py sets forwarded_allow_ips from TRUSTED_PROXIES (never "*"). ASGI (uvicorn
# workers), so agents' long polls wait on the event loop, not on threads (README: "Long polls").
CMD ["gunicorn", "config.asgi:application", "--worker-class", "uvicorn.workers.UvicornWorker", "--config", "gunicorn.conf.py", "--bind", "0.0.0.0:8000", "--workers", "2", "--timeout", "60", "--access-logfile", "-"]


FROM nginx:1.27.5-alpine AS proxy
COPY deploy/nginx.conf /etc/nginx/conf.d/default.conf
COPY --from=app /app/staticfiles /usr/share/nginx/static
