"""A grant's sponsor hears of drift in Slack: through a real Celery worker and the fake Slack
Web API."""

import pytest

from tests.approvals.conftest import submit
from tests.approvals.test_slack import fake_slack, slack, slack_worker  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_the_sponsor_hears_of_a_drifting_tool_call(slack, agent_api, privileges):  # noqa: F811
    grant_id = submit(agent_api).json()["grant"]["id"]
    response = agent_api.post(
        f"/api/v1/grants/{grant_id}/tool-calls",
        {"tool": "sql.select", "target": "payroll 2026-11", "outcome": "success"},
        format="json",
    )
    assert response.json()["drift"]["kinds"] == ["target"]

    def to_sponsor():
        return [
            c.params.get("text", "")
            for c in slack.of("chat.postMessage")
            if c.params.get("channel") == "USPONSOR1"
        ]

    assert slack.wait_for(to_sponsor)
    (text,) = to_sponsor()
    assert f"drifted under grant #{grant_id}" in text
    assert "target outside the intent" in text and "payroll 2026-11" in text
    assert "It is flagged." in text
