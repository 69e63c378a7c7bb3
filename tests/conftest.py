import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from rest_framework.test import APIClient

from tests.factories import AgentFactory, SponsorProfileFactory, TrustDomainFactory, UserFactory
from tests.identity import SigningIdentity


@pytest.fixture(autouse=True)
def _fresh_cache():
    # JWKS documents and rate-limit counters must not leak between tests (Redis in CI), nor
    # may per-process caches of rows that a test's rollback removed (signing keys, policies).
    from approvals import drift_policy, policy, tokens

    cache.clear()
    tokens._current_cache = None
    tokens._public_cache.clear()
    policy._compiled = None
    drift_policy._cached = None
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _checkpoint_file(settings, tmp_path):
    # Published audit checkpoints go to a file per test, never to the project's var/.
    settings.CUSTODY_CHECKPOINT_FILE = tmp_path / "audit-checkpoints.jsonl"
    return settings.CUSTODY_CHECKPOINT_FILE


@pytest.fixture(autouse=True)
def _eligible_by_default(request):
    """Most tests are not about eligibility: every agent is made eligible, without limits, for
    every catalogued privilege as the rows appear (directly, like migration 0010 would have
    for what they ask). A test marked `eligibility` sees only the eligibility it grants."""
    if request.node.get_closest_marker("eligibility"):
        yield
        return
    from django.db.models.signals import post_save

    from agents.models import Agent
    from approvals.models import Eligibility, Privilege

    def agent_saved(sender, instance, created, raw=False, **kwargs):
        if created and not raw:
            Eligibility.objects.bulk_create(
                [
                    Eligibility(agent=instance, privilege=privilege, granted_by="test")
                    for privilege in Privilege.objects.all()
                ],
                ignore_conflicts=True,
            )

    def privilege_saved(sender, instance, created, raw=False, **kwargs):
        if created and not raw:
            Eligibility.objects.bulk_create(
                [
                    Eligibility(agent=agent, privilege=instance, granted_by="test")
                    for agent in Agent.objects.all()
                ],
                ignore_conflicts=True,
            )

    post_save.connect(agent_saved, sender=Agent, dispatch_uid="test-eligible-agent")
    post_save.connect(privilege_saved, sender=Privilege, dispatch_uid="test-eligible-privilege")
    try:
        yield
    finally:
        post_save.disconnect(sender=Agent, dispatch_uid="test-eligible-agent")
        post_save.disconnect(sender=Privilege, dispatch_uid="test-eligible-privilege")


@pytest.fixture
def signer():
    return SigningIdentity("ES256")


@pytest.fixture
def trust_domain(db, signer):
    return TrustDomainFactory(name="example.test", jwks=signer.jwks)


@pytest.fixture
def team(db):
    return Group.objects.create(name="payments-platform")


@pytest.fixture
def sponsor(db, team):
    user = UserFactory(username="sponsor")
    SponsorProfileFactory(user=user, slack_user_id="USPONSOR1")
    user.groups.add(team)
    return user


@pytest.fixture
def backup_approver(db, agent):
    """Added the one way there is: by a person who manages approvers, through the service."""
    from agents.services import backup_approver_add

    user = UserFactory(username="backup")
    SponsorProfileFactory(user=user, slack_user_id="UBACKUP01")
    keeper = UserFactory(username="approvers-keeper", is_superuser=True)
    backup_approver_add(agent=agent, user=user, by=keeper)
    return user


@pytest.fixture
def outsider(db):
    return UserFactory(username="outsider")


@pytest.fixture
def admin_user(db):
    return UserFactory(username="admin", is_staff=True, is_superuser=True)


@pytest.fixture
def agent(db, trust_domain, sponsor, team):
    return AgentFactory(
        spiffe_id="spiffe://example.test/agents/invoice-bot",
        name="Invoice bot",
        sponsor=sponsor,
        team=team,
    )


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def agent_api(agent, signer):
    """An API client that presents the agent's JWT-SVID."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {signer.mint(agent.spiffe_id)}")
    return client
