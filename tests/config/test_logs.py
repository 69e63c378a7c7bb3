"""The log format follows DEBUG (people read `make run`'s lines) unless CUSTODY_LOG_FORMAT says
otherwise; Sentry reports only when SENTRY_DSN is set, and without people's data."""

import json

from tests.config.test_settings import STRONG_KEY, refusal, start

PRODUCTION = {"SECRET_KEY": STRONG_KEY, "ALLOWED_HOSTS": "custody.example"}
LOG_A_LINE = (
    "import logging; from core import log_context; "
    "log_context.replace({'request_id': 'r-1', 'grant_id': 7}); "
    "logging.getLogger('custody.security').warning('refused %s', 'x', extra={'why': 'y'})"
)


def test_it_logs_json_lines_outside_debug(tmp_path):
    result = start(tmp_path, LOG_A_LINE, **PRODUCTION)
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(line) for line in result.stderr.splitlines()]
    assert line["level"] == "WARNING"
    assert line["logger"] == "custody.security"
    assert line["message"] == "refused x"
    assert (line["request_id"], line["grant_id"], line["why"]) == ("r-1", 7, "y")
    assert "time" in line


def test_it_logs_plain_lines_for_people_under_debug(tmp_path):
    result = start(tmp_path, LOG_A_LINE, DEBUG="true")
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    assert " WARNING custody.security: refused x [request_id=r-1 grant_id=7]" in line
    assert not line.startswith("{")


def test_the_format_can_be_chosen_either_way(tmp_path):
    plain = start(tmp_path, LOG_A_LINE, CUSTODY_LOG_FORMAT="plain", **PRODUCTION)
    assert "refused x [request_id=r-1 grant_id=7]" in plain.stderr
    as_json = start(tmp_path, LOG_A_LINE, CUSTODY_LOG_FORMAT="json", DEBUG="true")
    assert json.loads(as_json.stderr.splitlines()[0])["request_id"] == "r-1"
    assert refusal(start(tmp_path, CUSTODY_LOG_FORMAT="xml", **PRODUCTION)) == (
        "CUSTODY_LOG_FORMAT must be json or plain."
    )


def test_sentry_is_off_unless_a_dsn_is_set_and_never_sends_personal_data(tmp_path):
    report = (
        "import sentry_sdk; client = sentry_sdk.get_client(); "
        "print(client.is_active(), client.options['send_default_pii'], "
        "client.options['max_request_body_size'])"
    )
    off = start(tmp_path, report, **PRODUCTION)
    assert off.stdout.split()[0] == "False", off.stderr
    on = start(tmp_path, report, SENTRY_DSN="https://key@127.0.0.1:9/1", **PRODUCTION)
    assert on.stdout.split() == ["True", "False", "never"], on.stderr
