"""The process layout (Procfile and docker-compose.yml): the sweeps never share a worker with the
ETA tasks, and every periodic sweep is routed to the queue those workers consume."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = (
    "approvals.tasks.sweep_expired_grants",
    "approvals.tasks.sweep_request_deadlines",
    "approvals.tasks.enqueue_upcoming_expiries",
)


def route(task: str) -> str:
    from config.celery import app

    return app.amqp.router.route({}, task)["queue"].name


def procfile_queues() -> list[set[str]]:
    commands = [line.split(":", 1)[1] for line in (ROOT / "Procfile").read_text().splitlines()]
    return [
        set(match.group(1).split(","))
        for command in commands
        if (match := re.search(r"--queues=(\S+)", command))
    ]


def compose_queues() -> list[set[str]]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    queues = []
    for service in services.values():
        for argument in service.get("command") or []:
            if str(argument).startswith("--queues="):
                queues.append(set(argument.removeprefix("--queues=").split(",")))
    return queues


def test_every_sweep_goes_to_the_sweeps_queue_and_expiry_to_its_own():
    assert {route(task) for task in SWEEPS} == {"sweeps"}
    assert route("approvals.tasks.expire_grant") == "expiry"


def test_the_sweeps_have_workers_that_do_not_hold_eta_tasks():
    for layout in (procfile_queues(), compose_queues()):
        sweepers = [queues for queues in layout if "sweeps" in queues]
        assert len(sweepers) >= 2, layout  # their own worker, and the notifications worker
        assert all("expiry" not in queues for queues in sweepers), layout
        assert any("expiry" in queues for queues in layout), layout
