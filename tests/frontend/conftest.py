import pytest
from django.test import Client
from django.utils import timezone

from approvals import services
from approvals.models import Decision
from tests.approvals import conftest as approvals_conftest
from tests.factories import AccessRequestFactory, UserFactory

PASSWORD = "correct horse battery staple"  # UserFactory's

privileges = approvals_conftest.privileges  # the shared privilege catalog


@pytest.fixture
def web():
    """A browser-like client logged in as a person, as just after the login page."""

    def login(user, **kwargs):
        client = Client(**kwargs)
        client.force_login(user)
        return client

    return login


@pytest.fixture
def teammate(db, team):
    """On the agent's team: sees the agent and its grants, may not approve or manage."""
    user = UserFactory(username="teammate")
    user.groups.add(team)
    return user


@pytest.fixture
def pending(agent, privileges):
    """A request by the agent waiting for people (medium risk: one approval by default)."""

    def make(privilege_name="payments-api:refund", *, for_agent=None, **kwargs):
        return AccessRequestFactory(
            agent=for_agent or agent, privilege_name=privilege_name, **kwargs
        )

    return make


def approve(user, access_request, verdict="approve", comment="decided in a test"):
    """A decision through the service, as the API or Slack would record it (with a comment:
    a denial and a critical approval need one)."""
    return services.access_request_decide(
        access_request_id=access_request.pk,
        approver=user,
        verdict=verdict,
        comment=comment,
        channel=Decision.Channel.API,
        authenticated_at=timezone.now(),
    )


@pytest.fixture
def granted(pending, sponsor):
    """A grant in force: a request approved by the sponsor."""

    def make(privilege_name="payments-api:refund", *, approver=None, **kwargs):
        return approve(approver or sponsor, pending(privilege_name, **kwargs)).grant

    return make
