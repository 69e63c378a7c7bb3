"""The people an agent's life needs hear of it in Slack: the sponsor of a dormant agent, the
team and backups of an orphan. Through a real Celery worker and the fake Slack Web API."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from agents.tasks import sweep_agent_lifecycle
from tests.approvals.test_slack import fake_slack, slack, slack_worker  # noqa: F401  (fixtures)

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
