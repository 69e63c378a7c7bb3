"""A sponsor completing a review races the sweep that expires it at the end of the grace period:
real threads (real PostgreSQL in CI; on SQLite the one writer at a time gives the two orders).
Whoever wins, the review is closed once, its evidence written once, and the agent is either
attested (active) or suspended by the overdue action, never both; the chain verifies."""

from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from agents.models import Agent
from approvals.models import Eligibility, Review
from approvals.services.reviews import review_open
from approvals.tasks import sweep_reviews
from audit.models import AuditEvent
from audit.services import verify_chain
from tests.agents.test_lifecycle_concurrency import race
from tests.approvals.conftest import privileges  # noqa: F401  (a fixture)
from tests.factories import AgentFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.eligibility]

REPETITIONS = 8


def web(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def test_completing_a_review_racing_the_overdue_sweep_closes_it_once(
    trust_domain,
    team,
    privileges,  # noqa: F811
    settings,
):
    settings.CUSTODY_REVIEW_GRACE_DAYS = 14
    sponsor = UserFactory(username="racer")
    outcomes = set()
    for n in range(REPETITIONS):
        agent = AgentFactory(sponsor=sponsor, team=team, name=f"Racer {n}")
        Eligibility.objects.create(agent=agent, privilege=privileges["read"], granted_by="racer")
        review = review_open(agent_id=agent.pk, today=agent.review_due)
        eligibility_id = Eligibility.objects.get(agent=agent).pk
        with time_machine.travel(
            timezone.now() + timedelta(days=(review.grace_ends() - timezone.localdate()).days),
            tick=False,
        ):
            client = web(sponsor)  # signed in at the travelled time, before the race starts
            swept, answered = race(
                lambda: sweep_reviews.apply().get(),
                lambda review=review, eligibility_id=eligibility_id, client=client: client.post(
                    f"/reviews/{review.pk}/",
                    {f"decision-{eligibility_id}": "keep", "verdict": "attest"},
                ),
            )
        assert isinstance(swept, dict), swept
        review.refresh_from_db()
        agent.refresh_from_db()
        closing = AuditEvent.objects.filter(
            agent_id=agent.pk, verb__in=["review.completed", "review.expired"]
        )
        assert closing.count() == 1
        if review.status == Review.Status.COMPLETED:
            assert answered.status_code == 302
            assert swept["expired"] == 0
            assert agent.status == Agent.Status.ACTIVE
            assert not AuditEvent.objects.filter(agent_id=agent.pk, verb="agent.suspended")
        else:
            assert review.status == Review.Status.EXPIRED
            assert answered.status_code == 409, answered.content
            assert "already expired" in answered.content.decode()
            assert agent.status == Agent.Status.SUSPENDED
        outcomes.add(review.status)
    assert verify_chain().ok
    print("outcomes seen:", sorted(outcomes))
