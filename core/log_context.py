"""Who and what a log line is about: a request id, the agent or person, grant/request/task ids.

The fields live in a context variable bound per HTTP request (core.middleware) and per Celery
task; a record factory copies them onto every log record, whichever logger wrote it (Django's,
Celery's, axes', ours) and whichever handler reads it (the console, pytest's caplog). A task
enqueued while serving a request carries the request's fields in a message header, so the
worker's lines name the same request id.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import re
import uuid

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

# The fields, in the order the plain format shows them.
FIELDS = (
    "request_id",
    "client_ip",
    "agent",
    "person",
    "access_request_id",
    "grant_id",
    "task_id",
    "celery_task_id",
    "celery_task",
)
HEADER = "custody_log_context"
# What we accept as a request id from a trusted proxy: short, printable, no spaces or quotes.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

_EMPTY: dict = {}  # never mutated: every change sets a new dict
_context: contextvars.ContextVar[dict] = contextvars.ContextVar("custody_log_context")


def _get() -> dict:
    return _context.get(_EMPTY)


def current() -> dict:
    return dict(_get())


def replace(fields: dict) -> None:
    """Start a new context (a new request or task): nothing of the previous one stays."""
    _context.set({key: value for key, value in fields.items() if key in FIELDS and value})


def bind(**fields) -> None:
    """Add fields to the current context (None values are left out)."""
    merged = dict(_get())
    merged.update({key: value for key, value in fields.items() if value is not None})
    _context.set(merged)


@contextlib.contextmanager
def bound(**fields):
    token = _context.set({**_get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> str | None:
    if value and REQUEST_ID.fullmatch(value):
        return value
    return None


_base_factory = logging.getLogRecordFactory()


ATTRIBUTE = "custody"  # one attribute, so no `extra=` key can collide with a context field


def _record_with_context(*args, **kwargs) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    setattr(record, ATTRIBUTE, _get())  # never mutated in place: a snapshot
    return record


def fields_of(record: logging.LogRecord) -> dict:
    """The context fields of a record (empty for one made before `install()`)."""
    return getattr(record, ATTRIBUTE, None) or {}


def install() -> None:
    """Put the context on every record (idempotent)."""
    if logging.getLogRecordFactory() is not _record_with_context:
        logging.setLogRecordFactory(_record_with_context)


install()


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time, level, logger, message, the context fields, any `extra`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("timestamp", "time")
        kwargs.setdefault(
            "rename_fields", {"levelname": "level", "name": "logger", "exc_info": "exception"}
        )
        super().__init__("%(levelname)s %(name)s %(message)s", *args, **kwargs)

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop(ATTRIBUTE, None)
        for key, value in fields_of(record).items():
            log_data.setdefault(key, value)  # what a call passed in `extra=` wins


class PlainFormatter(logging.Formatter):
    """The human-readable line (DEBUG, `make run`), with the context fields appended."""

    def __init__(self, *args, **kwargs):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = fields_of(record)
        fields = [f"{key}={context[key]}" for key in FIELDS if key in context]
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # tracebacks stay below the fields
        return f"{head} [{' '.join(fields)}]{newline}{rest}"


# --- Celery: the context rides in a message header from the enqueuer to the worker ---------

_task_tokens: dict = {}


def _task_published(headers=None, **kwargs) -> None:
    fields = {
        key: value
        for key, value in _get().items()
        if key not in ("client_ip", "celery_task_id", "celery_task")
    }
    if headers is not None and fields:
        headers[HEADER] = fields


def _task_started(task_id=None, task=None, args=None, kwargs=None, **rest) -> None:
    request = getattr(task, "request", None)
    carried = None
    if request is not None:
        carried = getattr(request, HEADER, None) or (getattr(request, "headers", None) or {}).get(
            HEADER
        )
    fields = dict(carried) if isinstance(carried, dict) else {}
    fields["request_id"] = valid_request_id(fields.get("request_id")) or new_request_id()
    # Tasks take ids by name: a grant's or a request's id names what the task is about.
    try:
        arguments = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {}))
        named = arguments.arguments
    except (TypeError, ValueError, AttributeError):
        named = kwargs or {}
    for key in ("grant_id", "access_request_id"):
        if isinstance(named.get(key), int):
            fields[key] = named[key]
    fields["celery_task_id"] = task_id
    fields["celery_task"] = getattr(task, "name", None)
    fields = {key: value for key, value in fields.items() if key in FIELDS and value}
    # Reset, not cleared, afterwards: an eagerly applied task runs inside its caller's context.
    _task_tokens[task_id] = _context.set(fields)


def _task_finished(task_id=None, **kwargs) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        with contextlib.suppress(ValueError):  # set in another context: nothing of ours to undo
            _context.reset(token)


def connect_celery() -> None:
    """Called by the Celery app (config/celery.py) in every process that sends or runs tasks."""
    from celery.signals import before_task_publish, task_postrun, task_prerun

    before_task_publish.connect(_task_published, weak=False, dispatch_uid="custody-log-publish")
    task_prerun.connect(_task_started, weak=False, dispatch_uid="custody-log-prerun")
    task_postrun.connect(_task_finished, weak=False, dispatch_uid="custody-log-postrun")
