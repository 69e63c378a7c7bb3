"""Review reminders in Slack: the sponsor hears when a review opens, the team's channel and the
backups when it escalates halfway through the grace period. Through a real Celery worker and the
fake Slack Web API; the clock moves by time-machine."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from approvals.tasks import sweep_reviews
from tests.agents.test_lifecycle_slack import messages_to
from tests.approvals.test_slack import fake_slack, slack, slack_worker  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_the_sponsor_hears_of_a_due_review_and_the_team_of_its_escalation(
    slack,  # noqa: F811
    agent,
    backup_approver,
    settings,
):
    settings.CUSTODY_REVIEW_GRACE_DAYS = 14
    days = (agent.review_due - timezone.localdate()).days
    with time_machine.travel(timezone.now() + timedelta(days=days), tick=False):
        assert sweep_reviews.apply().get()["opened"] == 1
    assert slack.wait_for(lambda: messages_to(slack, "USPONSOR1"))
    (text,) = messages_to(slack, "USPONSOR1")
    assert text.startswith("Your review of Invoice bot (spiffe://example.test/agents/invoice-bot)")
    assert "/reviews/" in text and "it is suspended" in text
    assert not messages_to(slack, "CTEAM0001")

    with time_machine.travel(timezone.now() + timedelta(days=days + 7), tick=False):
        assert sweep_reviews.apply().get()["escalated"] == 1
    assert slack.wait_for(
        lambda: messages_to(slack, "CTEAM0001") and messages_to(slack, "UBACKUP01")
    )
    (escalation,) = messages_to(slack, "CTEAM0001")
    assert escalation.startswith("sponsor has not reviewed Invoice bot")
    assert len(messages_to(slack, "USPONSOR1")) == 1
