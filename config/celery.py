import logging
import os
import shutil
import threading

from celery import Celery
from celery.app.amqp import AMQP
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)
from kombu import Connection

from core import log_context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
logger = logging.getLogger(__name__)


def _close_redis_channels_when_the_broker_is_gone() -> None:
    """A worker must outlive a Redis restart, ETA tasks in hand included.

    On a lost connection Celery's consumer closes the connection twice: `collect()`, then
    `close()`. kombu's Redis channel first reads the reply of its pending BRPOP (kombu#1733);
    with Redis gone that read raises, the channel stays open, and `collect()` detaches the
    transport from the connection. The second close then restores the unacknowledged messages
    (the ETA tasks the worker holds) through a pool built from the detached transport's
    parameters: `AttributeError: 'NoneType' object has no attribute 'hostname'`, which is not a
    connection error, so the worker dies instead of reconnecting (kombu and celery 5.7.0, the
    newest). Here the failed read no longer aborts the first close: the channel closes, the
    restore fails with a connection error that the consumer ignores, and it reconnects. Messages
    it could not restore stay in Redis's unacked set (redelivered after the visibility timeout,
    and a run then finds its grant ended); the sweep ends their grants on time meanwhile.
    """
    from kombu.transport import redis as kombu_redis

    channel = kombu_redis.Channel
    if getattr(channel.close, "custody_patched", False):
        return
    close = channel.close

    def close_even_if_the_broker_is_gone(self):
        if self._in_poll:
            try:
                self._brpop_read()
            except kombu_redis.Empty:
                pass
            except self.connection_errors:
                pass  # the broker is gone: there is no reply to read, only a channel to close
        return close(self)

    close_even_if_the_broker_is_gone.custody_patched = True
    channel.close = close_even_if_the_broker_is_gone


_close_redis_channels_when_the_broker_is_gone()


def _filesystem_urls_use_the_atomic_transport() -> None:
    """`filesystem://` (the embedded broker) means config/file_broker.py's transport in every
    process that loads this app, whichever way the URL arrives (settings, `celery -b`, a test
    pointing the app elsewhere): mapped by scheme, not by `broker_transport`, which would
    override a `redis://` URL given later."""
    from kombu import transport

    transport.TRANSPORT_ALIASES["filesystem"] = "config.file_broker:Transport"
    transport._transport_cache.pop("filesystem", None)


_filesystem_urls_use_the_atomic_transport()

# Seconds between attempts to reach a lost broker (kombu backs off up to 30 s by default).
BROKER_RECONNECT_SECONDS = 1


class BrokerConnection(Connection):
    """Workers and beat try a lost broker again every second, however long it has been away.

    Celery's consumer, beat and beat's control thread call `ensure_connection()` with kombu's
    default back-off (2, 4, 6 ... up to 30 s between attempts): after a minute-long Redis outage
    the worker and beat would come back up to 30 s after Redis did, longer than a sweep interval.
    Their retry budget is `broker_connection_max_retries` (None in settings: forever)."""

    def ensure_connection(
        self,
        errback=None,
        max_retries=None,
        interval_start=BROKER_RECONNECT_SECONDS,
        interval_step=0,
        interval_max=BROKER_RECONNECT_SECONDS,
        **kwargs,
    ):
        return super().ensure_connection(
            errback, max_retries, interval_start, interval_step, interval_max, **kwargs
        )


class CustodyAMQP(AMQP):
    Connection = BrokerConnection


app = Celery("custody", amqp=CustodyAMQP)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def _log_as_django_does(**kwargs):
    # Celery would install its own plain handler on the root logger; the worker's lines instead
    # go through settings.LOGGING (JSON or plain, with the request id a task was enqueued under).
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


log_context.connect_celery()


@task_prerun.connect
@task_postrun.connect
def _recycle_database_connections(**kwargs):
    # Celery's Django fixup would open a new connection per task; with CELERY_DB_REUSE_MAX set
    # it keeps them, and this retires broken or CONN_MAX_AGE-old ones the way requests do.
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:  # a task applied inside a transaction keeps it
            connection.close_if_unusable_or_obsolete()


def _sweep_forever(interval: float, stopping: threading.Event) -> None:
    from django.db import connection

    from approvals.tasks import sweep_expired_grants, sweep_request_deadlines

    while not stopping.wait(interval):
        for sweep in (sweep_expired_grants, sweep_request_deadlines):
            try:
                sweep()  # in this process: no broker involved
            except Exception:
                logger.exception("sweep clock: %s failed; trying again next interval", sweep.name)
            finally:
                connection.close_if_unusable_or_obsolete()


_sweep_clock_stopping = threading.Event()


@worker_ready.connect
def _start_sweep_clock(sender, **kwargs):
    """A worker that consumes the `sweeps` queue also sweeps on its own clock, every
    CUSTODY_SWEEP_SECONDS, in its main process. Beat's sweeps travel through the broker; these
    do not, so a broker outage, or a sweep message lost with a killed worker, never leaves a
    due grant or request deadline standing longer than one interval. Concurrent sweeps are
    harmless: each grant ends once, through the same conditional service."""
    from django.conf import settings

    if "sweeps" not in sender.app.amqp.queues.consume_from:
        return
    interval = float(settings.CUSTODY_SWEEP_SECONDS)
    threading.Thread(
        target=_sweep_forever,
        args=(interval, _sweep_clock_stopping),
        name="sweep-clock",
        daemon=True,
    ).start()


@task_postrun.connect
def _count_task(sender=None, state=None, **kwargs):
    from core.metrics import CELERY_TASKS

    CELERY_TASKS.labels(task=getattr(sender, "name", "unknown"), state=state or "UNKNOWN").inc()


@worker_ready.connect
def _serve_worker_metrics(sender, **kwargs):
    """CUSTODY_WORKER_METRICS_PORT set: this worker's counters (all its children's, in
    multiprocess mode) over HTTP for Prometheus. The database gauges come from the web's /metrics
    only, so no series is counted twice."""
    from django.conf import settings
    from prometheus_client import start_http_server

    from core.metrics import process_registry

    if settings.CUSTODY_WORKER_METRICS_PORT:
        start_http_server(
            settings.CUSTODY_WORKER_METRICS_PORT,
            addr=settings.CUSTODY_WORKER_METRICS_ADDRESS,
            registry=process_registry(),
        )
        logger.info("metrics on port %s", settings.CUSTODY_WORKER_METRICS_PORT)


@worker_init.connect
def _fresh_metrics_directory(**kwargs):
    # prometheus-client's multiprocess mode: a worker (and its children) start from an empty one.
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)


@worker_process_shutdown.connect
def _metrics_of_a_dead_child(pid=None, **kwargs):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and pid:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


@worker_shutting_down.connect
def _stop_sweep_clock(**kwargs):
    _sweep_clock_stopping.set()
