"""The people an agent's life needs hear of it in Slack: the sponsor of a dormant agent, the
team and backups of an orphan. Through a real Celery worker and the fake Slack Web API."""

import time
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from agents.lifecycle import agent_take_ownership
from agents.tasks import sweep_agent_lifecycle
from tests.agents.test_lifecycle import deactivate
from tests.approvals.test_slack import fake_slack, slack, slack_worker  # noqa: F401  (fixtures)
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def messages_to(fake, channel: str) -> list[str]:
    return [
        call.params.get("text", "")
        for call in fake.of("chat.postMessage")
        if call.params.get("channel") == channel
    ]


def test_the_sponsor_of_a_dormant_agent_hears_of_it_in_slack(slack, agent, settings):  # noqa: F811
    settings.CUSTODY_DORMANT_AFTER_DAYS = 30
    with time_machine.travel(timezone.now() + timedelta(days=31), tick=False):
        assert sweep_agent_lifecycle.apply().get()["dormant_flagged"] == 1
    assert slack.wait_for(lambda: messages_to(slack, "USPONSOR1"))
    (text,) = messages_to(slack, "USPONSOR1")
    assert "Invoice bot" in text and "has not authenticated for 30 days" in text
    assert f"/agents/{agent.pk}/" in text


def test_the_team_and_backups_of_an_orphan_hear_of_it_in_slack(
    slack,  # noqa: F811
    agent,
    sponsor,
    backup_approver,
):
    sponsor.is_active = False
    sponsor.save()
    assert slack.wait_for(
        lambda: messages_to(slack, "CTEAM0001") and messages_to(slack, "UBACKUP01")
    )
    (text,) = messages_to(slack, "CTEAM0001")
    assert "Invoice bot" in text and "is orphaned" in text
    assert "Someone from payments-platform takes ownership by" in text
    assert not messages_to(slack, "USPONSOR1")  # the sponsor is gone


# --- each notice once, however often its task runs (retries, redelivery, a second enqueue) -----


def run_on_worker(worker, task_name: str, *args) -> None:
    """Hand the task to the real worker (its own process) and wait until it has finished."""
    from celery import current_app

    result = current_app.send_task(task_name, args=list(args))
    finished = f"Task {task_name}[{result.id}] succeeded"
    deadline = time.monotonic() + 30
    while finished not in worker.output():
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.05)


def test_an_orphan_notice_runs_twice_and_is_posted_once(
    slack,  # noqa: F811
    slack_worker,  # noqa: F811
    agent,
    sponsor,
    backup_approver,
):
    deactivate(sponsor)
    assert slack.wait_for(
        lambda: messages_to(slack, "CTEAM0001") and messages_to(slack, "UBACKUP01")
    )
    run_on_worker(slack_worker, "approvals.tasks.notify_agent_flagged", agent.pk, "orphaned")
    run_on_worker(slack_worker, "approvals.tasks.notify_agent_flagged", agent.pk, "orphaned")
    assert len(messages_to(slack, "CTEAM0001")) == 1
    assert len(messages_to(slack, "UBACKUP01")) == 1


def test_a_retried_orphan_notice_posts_only_where_it_had_not_yet(
    slack,  # noqa: F811
    agent,
    sponsor,
    backup_approver,
):
    # The backup hears first; the team's channel fails once, so the task retries.
    slack.fail_after("chat.postMessage", 500, successes=1)
    deactivate(sponsor)
    assert slack.wait_for(lambda: messages_to(slack, "CTEAM0001"), timeout=30)
    failed = [call for call in slack.of("chat.postMessage", ok_only=False) if call.status != 200]
    assert [call.params["channel"] for call in failed] == ["CTEAM0001"]
    assert len(messages_to(slack, "UBACKUP01")) == 1
    assert len(messages_to(slack, "CTEAM0001")) == 1


def test_an_orphan_orphaned_again_is_a_new_notice(
    slack,  # noqa: F811
    slack_worker,  # noqa: F811
    agent,
    sponsor,
    team,
):
    operator = UserFactory(username="operator")
    operator.groups.add(team)
    deactivate(sponsor)
    assert slack.wait_for(lambda: messages_to(slack, "CTEAM0001"))
    agent_take_ownership(agent=agent, person=operator)
    run_on_worker(slack_worker, "approvals.tasks.notify_agent_flagged", agent.pk, "orphaned")
    assert len(messages_to(slack, "CTEAM0001")) == 1  # owned again: nothing to say
    deactivate(operator)  # the new sponsor leaves too: a second orphaning, a second notice
    assert slack.wait_for(lambda: len(messages_to(slack, "CTEAM0001")) == 2)


def test_a_dormant_notice_runs_twice_and_is_posted_once(
    slack,  # noqa: F811
    slack_worker,  # noqa: F811
    agent,
    settings,
):
    settings.CUSTODY_DORMANT_AFTER_DAYS = 30
    with time_machine.travel(timezone.now() + timedelta(days=31), tick=False):
        assert sweep_agent_lifecycle.apply().get()["dormant_flagged"] == 1
    assert slack.wait_for(lambda: messages_to(slack, "USPONSOR1"))
    run_on_worker(slack_worker, "approvals.tasks.notify_agent_flagged", agent.pk, "dormant")
    run_on_worker(slack_worker, "approvals.tasks.notify_agent_flagged", agent.pk, "dormant")
    assert len(messages_to(slack, "USPONSOR1")) == 1


def test_a_review_reminder_runs_twice_and_is_posted_once(
    slack,  # noqa: F811
    slack_worker,  # noqa: F811
    agent,
):
    from approvals.models import Review
    from approvals.tasks import sweep_reviews

    days = (agent.review_due - timezone.localdate()).days
    with time_machine.travel(timezone.now() + timedelta(days=days), tick=False):
        assert sweep_reviews.apply().get()["opened"] == 1
    assert slack.wait_for(lambda: messages_to(slack, "USPONSOR1"))
    review = Review.objects.get(agent=agent)
    run_on_worker(slack_worker, "approvals.tasks.notify_review", review.pk, "due")
    run_on_worker(slack_worker, "approvals.tasks.notify_review", review.pk, "due")
    assert len(messages_to(slack, "USPONSOR1")) == 1
