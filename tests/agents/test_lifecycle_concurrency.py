"""The lifecycle sweep racing people: real threads (real PostgreSQL in CI; on SQLite the one
writer at a time makes these the two orders a whole-database lock allows). Whoever wins, the
agent ends owned or suspended, each transition recorded once, and the chain verifies."""

import threading
import time

import pytest
from django.db import connection, transaction
from django.test import Client

from agents.lifecycle import agent_take_ownership
from agents.models import Agent
from agents.tasks import sweep_agent_lifecycle
from audit.models import AuditEvent
from audit.services import Actor, verify_chain
from tests.factories import AgentFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

REPETITIONS = 8


def web(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def race(*actions) -> list:
    barrier = threading.Barrier(len(actions))
    results: list = [None] * len(actions)

    def run(index, action):
        try:
            barrier.wait()
            results[index] = action()
        except Exception as exc:  # an exception is an answer to check, not a lost thread
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.fixture
def orphans(db, trust_domain, team, settings):
    """Orphans already past their (zero-day) grace period, and a team member to take them."""
    settings.CUSTODY_ORPHAN_GRACE_DAYS = 0
    operator = UserFactory(username="operator")
    operator.groups.add(team)
    made = []
    for n in range(REPETITIONS):
        sponsor = UserFactory(username=f"leaver-{n}")
        made.append(AgentFactory(sponsor=sponsor, team=team))
        sponsor.is_active = False
        sponsor.save()
    assert Agent.objects.filter(orphaned_at__isnull=False).count() == REPETITIONS
    return operator, made


def test_the_orphan_sweep_racing_a_take_over_leaves_each_agent_owned_once(orphans):
    operator, agents = orphans
    for agent in agents:
        sweep, taken = race(
            lambda: sweep_agent_lifecycle.apply().get(),
            lambda agent=agent: web(operator).post(f"/agents/{agent.pk}/take-ownership/"),
        )
        assert isinstance(sweep, dict), sweep
        assert taken.status_code == 302
        agent.refresh_from_db()
        # The take-over always succeeds (an orphan suspended a moment earlier is still taken).
        assert agent.sponsor == operator and agent.orphaned_at is None
        suspensions = AuditEvent.objects.filter(agent_id=agent.pk, verb="agent.suspended")
        if agent.status == Agent.Status.ACTIVE:
            assert not suspensions.exists()  # the take-over came first; the sweep let it be
        else:
            assert suspensions.count() == 1
        assert (
            AuditEvent.objects.filter(agent_id=agent.pk, verb="agent.orphan_cleared").count() == 1
        )
    assert verify_chain().ok


def test_reactivation_racing_a_take_over_never_activates_an_orphan(orphans, admin_user):
    operator, agents = orphans
    sweep_agent_lifecycle.apply().get()  # every orphan is suspended now
    for agent in agents:
        reactivated, taken = race(
            lambda agent=agent: web(admin_user).post(f"/agents/{agent.pk}/reactivate/"),
            lambda agent=agent: web(operator).post(f"/agents/{agent.pk}/take-ownership/"),
        )
        assert reactivated.status_code == 302 and taken.status_code == 302
        agent.refresh_from_db()
        assert agent.orphaned_at is None and agent.sponsor == operator
        reactivations = AuditEvent.objects.filter(agent_id=agent.pk, verb="agent.reactivated")
        if agent.status == Agent.Status.ACTIVE:
            # Only after the take-over committed: the event follows the owner's.
            cleared = AuditEvent.objects.get(agent_id=agent.pk, verb="agent.orphan_cleared")
            assert reactivations.get().sequence > cleared.sequence
        else:
            assert not reactivations.exists()
    assert verify_chain().ok


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def _until(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_take_over_committing_while_the_sweep_waits_for_the_row_wins(orphans):
    """The sweep has chosen its orphans and waits for one's row, which a take-over holds; when
    the take-over commits, the sweep re-reads the row and leaves the (now owned) agent be."""
    operator, agents = orphans
    agent = agents[0]
    if connection.vendor != "postgresql":
        # SQLite has one writer at a time: nothing waits mid-sweep, so the order is checked.
        agent_take_ownership(agent=agent, person=operator)
        assert sweep_agent_lifecycle.apply().get()["orphans_suspended"] == REPETITIONS - 1
        assert Agent.objects.get(pk=agent.pk).status == Agent.Status.ACTIVE
        return
    held, release, answers = threading.Event(), threading.Event(), {}

    def take_over_slowly():
        try:
            with transaction.atomic():
                Agent.objects.select_for_update(no_key=True).get(pk=agent.pk)
                held.set()
                release.wait(30)
                answers["taken"] = agent_take_ownership(agent=agent, person=operator)
        finally:
            connection.close()

    def sweep():
        try:
            answers["sweep"] = sweep_agent_lifecycle.apply().get()
        except Exception as exc:
            answers["sweep"] = exc
        finally:
            connection.close()

    taker = threading.Thread(target=take_over_slowly)
    taker.start()
    assert held.wait(10)
    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    assert _until(lambda: _waiting_on_locks() >= 1)  # the sweep waits at the agent's row
    release.set()
    taker.join(30)
    sweeper.join(30)

    assert isinstance(answers["sweep"], dict), answers["sweep"]
    assert answers["sweep"]["orphans_suspended"] == REPETITIONS - 1
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE and agent.sponsor == operator
    assert not AuditEvent.objects.filter(agent_id=agent.pk, verb="agent.suspended").exists()
    assert verify_chain().ok


def test_two_runs_of_a_notice_at_once_post_it_once(db, settings):
    """The same Slack notice posted by two task runs at the same moment (a redelivery racing
    its retry): the conditional claim lets one post; the other finds it sent or in flight."""
    from approvals import slack
    from approvals.models import SlackNotice
    from tests.fake_slack import FakeSlack

    fake = FakeSlack().start()
    try:
        settings.SLACK_API_URL = fake.url
        settings.SLACK_BOT_TOKEN = "xoxb-test"
        for n in range(REPETITIONS):
            key = f"agent:1:orphaned:race-{n}"
            results = race(
                lambda key=key: slack.post_notice_once(key=key, place="CTEAM0001", text="hi"),
                lambda key=key: slack.post_notice_once(key=key, place="CTEAM0001", text="hi"),
            )
            assert sorted(map(repr, results)) in (
                ["False", "True"],
                [repr(slack.NoticeInFlight(key)), "True"],
            ), results
        assert len(fake.of("chat.postMessage")) == REPETITIONS
        assert SlackNotice.objects.exclude(ts="").count() == REPETITIONS
    finally:
        fake.stop()


@pytest.mark.parametrize("joins", ["moved", "registered"])
def test_an_agent_joining_a_team_as_its_last_member_leaves_ends_owned_or_orphaned(
    db, trust_domain, joins
):
    """Invariant 13 under a race: the agent lands on the team and is orphaned as the member
    leaves, or it is refused for a team nobody runs; never on an empty team unflagged."""
    from agents.services import agent_change_team, agent_register
    from core.errors import DomainError
    from tests.factories import GroupFactory

    actor = Actor.system("test")
    for n in range(REPETITIONS):
        sponsor = UserFactory(username=f"{joins}-sponsor-{n}")
        home = GroupFactory(name=f"{joins}-home-{n}")
        sponsor.groups.add(home)
        target = GroupFactory(name=f"{joins}-target-{n}")
        last = UserFactory(username=f"{joins}-last-{n}")
        last.groups.add(target)
        spiffe_id = f"spiffe://example.test/agents/{joins}-{n}"
        if joins == "moved":
            agent = AgentFactory(spiffe_id=spiffe_id, sponsor=sponsor, team=home)

            def join(agent=agent, target=target):
                return agent_change_team(agent=agent, team=target, actor=actor)
        else:

            def join(spiffe_id=spiffe_id, sponsor=sponsor, target=target):
                return agent_register(
                    spiffe_id=spiffe_id, name="Racer", sponsor=sponsor, team=target, actor=actor
                )

        joined, _ = race(join, lambda last=last, target=target: last.groups.remove(target))
        on_target = Agent.objects.filter(spiffe_id=spiffe_id, team=target).first()
        if on_target is None:
            assert isinstance(joined, DomainError) and joined.code == "empty_team", joined
        else:
            assert on_target.orphan_reason == Agent.OrphanReason.TEAM_EMPTY, (n, joined)
    assert verify_chain().ok
