"""`custody`: an agent's view of Custody from a shell.

Exit codes (also in docs/integrating.md):
  0 done · 1 refused or failed otherwise · 2 bad usage · 3 denied · 4 not eligible ·
  5 still pending (not waited for, or the wait ran out) · 6 expired or ended ·
  7 rate-limited · 8 not authenticated or not allowed (no SVID, SVID refused) · 9 not found ·
  10 Custody unreachable or unavailable
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click

from custody_client.client import Client
from custody_client.errors import CustodyError
from custody_client.svid import DevSvidSource, FileSvidSource, SvidUnavailable

EXIT_OK = 0
EXIT_NO_SVID = 8


class _Context:
    def __init__(self, url, svid_file, dev, spiffe_socket, audience, as_json, timeout):
        self.url = url
        self.svid_file = svid_file
        self.dev = dev
        self.spiffe_socket = spiffe_socket
        self.audience = audience
        self.as_json = as_json
        self.timeout = timeout
        self._client = None

    def client(self) -> Client:
        if self._client is None:
            if self.svid_file:
                source = FileSvidSource(self.svid_file)
            elif self.dev:
                source = DevSvidSource(self.url, self.dev)
            elif self.spiffe_socket:
                from custody_client.svid import WorkloadApiSvidSource

                source = WorkloadApiSvidSource(self.spiffe_socket)
            else:
                raise SvidUnavailable(
                    "No SVID: give --svid-file (CUSTODY_SVID_FILE), --spiffe-socket "
                    "(SPIFFE_ENDPOINT_SOCKET), or in development --dev SPIFFE_ID."
                )
            self._client = Client(self.url, source, audience=self.audience, timeout=self.timeout)
        return self._client

    def out(self, document, lines) -> None:
        if self.as_json:
            click.echo(json.dumps(document, indent=2, default=str))
        else:
            for line in lines:
                click.echo(line)


def _when(value) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value) if value else "-"


class _Group(click.Group):
    """Every refusal becomes its sentence on stderr (or JSON) and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CustodyError as error:
            _fail(ctx, error.message, error.code, error.exit_code, extra=_extra(error))
        except SvidUnavailable as error:
            _fail(ctx, str(error), "no_svid", EXIT_NO_SVID)


def _extra(error: CustodyError) -> dict:
    extra = {"status": error.status}
    for name in ("request_id", "policies", "retry_after"):
        if getattr(error, name, None) not in (None, []):
            extra[name] = getattr(error, name)
    if error.fields:
        extra["fields"] = error.fields
    return extra


def _fail(ctx, message, code, exit_code, *, extra=None):
    state = ctx.obj
    if state is not None and state.as_json:
        click.echo(json.dumps({"error": {"code": code, "message": message, **(extra or {})}}))
    else:
        hint = f" (request #{extra['request_id']})" if extra and extra.get("request_id") else ""
        click.echo(f"custody: {message}{hint} [{code}]", err=True)
    sys.exit(exit_code)


@click.group(cls=_Group)
@click.option("--url", envvar="CUSTODY_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--svid-file", envvar="CUSTODY_SVID_FILE", help="JWT-SVID file (spiffe-helper).")
@click.option(
    "--spiffe-socket", envvar="SPIFFE_ENDPOINT_SOCKET", help="The SPIFFE Workload API socket."
)
@click.option(
    "--dev",
    "dev",
    envvar="CUSTODY_DEV_AGENT",
    metavar="SPIFFE_ID",
    help="Development only: SVIDs minted by a DEBUG Custody for this agent.",
)
@click.option("--audience", envvar="CUSTODY_AUDIENCE", default="custody", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--timeout", default=15.0, show_default=True, help="Seconds per HTTP call.")
@click.version_option(package_name="custody-client")
@click.pass_context
def main(ctx, url, svid_file, spiffe_socket, dev, audience, as_json, timeout):
    """Ask Custody for privileges as an agent. Exit codes: 0 done, 1 refused, 2 usage,
    3 denied, 4 not eligible, 5 pending, 6 expired/ended, 7 rate-limited,
    8 not authenticated, 9 not found, 10 unreachable."""
    ctx.obj = _Context(url, svid_file, dev, spiffe_socket, audience, as_json, timeout)


@main.command()
@click.pass_obj
def whoami(state: _Context):
    """The agent Custody sees: SPIFFE ID, status, sponsor, team."""
    agent = state.client().whoami()
    state.out(
        agent,
        [
            f"{agent['spiffe_id']}  {agent['name']}",
            f"status {agent['status']} · sponsor {agent['sponsor']} · team {agent['team']}",
        ],
    )


@main.command()
@click.argument("privilege")
@click.option("--task", "task_id", required=True, help="The task this privilege is for.")
@click.option("--intent", "justification", required=True, help="Why, in a sentence.")
@click.option("--action", help="What will be done (default: the privilege's action).")
@click.option("--target", help="On what (default: the privilege's resource).")
@click.option("--duration", default="10m", show_default=True, help="Seconds, or 30m, 1h…")
@click.option("--wait/--no-wait", default=False, help="Block while people decide (the long poll).")
@click.option("--timeout", "wait_seconds", type=int, help="With --wait: give up after N seconds.")
@click.option("--context", "context_json", help="Extra context as a JSON object.")
@click.pass_obj
def request(
    state: _Context,
    privilege,
    task_id,
    justification,
    action,
    target,
    duration,
    wait,
    wait_seconds,
    context_json,
):
    """Ask for PRIVILEGE (resource:action) for a task."""
    resource, _, privilege_action = privilege.partition(":")
    intent = {
        "action": action or privilege_action or privilege,
        "target": target or resource,
        "justification": justification,
    }
    try:
        context = json.loads(context_json) if context_json else None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--context") from exc
    how_long = (wait_seconds if wait_seconds is not None else True) if wait else False
    grant = state.client().request(
        privilege, task_id, intent, duration, wait=how_long, context=context
    )
    state.out(
        {
            "request_id": grant.request_id,
            "grant_id": grant.id,
            "privilege": grant.privilege,
            "task_id": grant.task_id,
            "expires_at": grant.expires_at,
            "access_token": grant.access_token,
        },
        [
            f"granted: grant #{grant.id} {grant.privilege} for task {grant.task_id} "
            f"until {_when(grant.expires_at)} (request #{grant.request_id})",
            f"token: custody token {grant.id}",
        ],
    )


@main.command()
@click.option("--active", is_flag=True, help="Only live grants.")
@click.pass_obj
def grants(state: _Context, active):
    """The agent's grants, newest first."""
    listed = state.client().grants(active=True if active else None)
    lines = [
        f"#{g['id']:<6} {g['scope']:<28} task {g['task_id']:<20} "
        + (f"live until {g['expires_at']}" if g["active"] else f"ended ({g['ended_reason']})")
        for g in listed
    ]
    state.out({"results": listed}, lines or ["no grants"])


@main.command()
@click.argument("grant_id", type=int)
@click.pass_obj
def token(state: _Context, grant_id):
    """A fresh access token for GRANT_ID, alone on stdout (for $(custody token N))."""
    grant = state.client().grant(grant_id)
    access_token = grant.refresh()
    state.out({"grant_id": grant_id, "access_token": access_token}, [access_token])


@main.command()
@click.argument("grant_id", type=int)
@click.pass_obj
def complete(state: _Context, grant_id):
    """The task is done: end GRANT_ID (and everything delegated from it) now."""
    ended = state.client().grant(grant_id).complete()
    state.out(ended, [f"grant #{grant_id} ended ({ended.get('ended_reason')})"])


@main.command()
@click.argument("request_id", type=int)
@click.pass_obj
def cancel(state: _Context, request_id):
    """Withdraw a pending request."""
    answer = state.client().cancel(request_id)
    state.out(answer, [f"request #{request_id} {answer['status']}"])


@main.command()
@click.argument("request_id", type=int, required=False)
@click.option("--grant", "grant_id", type=int, help="Explain the request behind this grant.")
@click.pass_obj
def explain(state: _Context, request_id, grant_id):
    """Why a request was decided as it was: policy outcome, reason, approvals."""
    client = state.client()
    if (request_id is None) == (grant_id is None):
        raise click.UsageError("Give a REQUEST_ID or --grant GRANT_ID.")
    if grant_id is not None:
        request_id = client._get(f"/api/v1/grants/{grant_id}")["request_id"]
    request = client.get_request(request_id)
    decision = request.get("decision") or {}
    rule = request.get("approvals_rule") or {}
    lines = [
        f"request #{request['id']}: {request['privilege']} for task {request['task_id']} "
        f"({request['duration_seconds']} s) is {request['status']}",
        f"policy: {decision.get('outcome')} by {', '.join(decision.get('policies') or []) or '-'}",
        f"reason: {decision.get('reason') or '-'}",
    ]
    if decision.get("final"):
        lines.append(f"final: {decision['final']}")
    if decision.get("outcome") == "request":
        lines.append(
            f"approvals: {request.get('approvals_received')} of {request.get('approvals_required')}"
            + (f" ({rule['reason']})" if rule.get("reason") else "")
        )
    if request.get("grant"):
        lines.append(f"grant: #{request['grant']['id']} until {request['grant']['expires_at']}")
    state.out(request, lines)


if __name__ == "__main__":  # pragma: no cover
    main()
