"""The data migration that turns yesterday's approve_for_agent object permissions into backup
approvers, so the services manage everyone who could approve before."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from guardian.shortcuts import assign_perm

from tests.factories import AgentFactory, GroupFactory, UserFactory

BEFORE = [("agents", "0001_initial")]
AFTER = [("agents", "0003_backup_approvers_and_manage_approvers")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_it_carries_over_approvers_who_are_not_the_sponsor():
    sponsor = UserFactory(username="sponsor")
    deputy = UserFactory(username="deputy")
    group = GroupFactory(name="deputies")
    agent = AgentFactory(sponsor=sponsor, team=GroupFactory(name="ops"))
    other = AgentFactory(sponsor=deputy, team=GroupFactory(name="ops"))
    assign_perm("agents.approve_for_agent", deputy, agent)
    assign_perm("agents.approve_for_agent", group, agent)  # groups stay group permissions
    try:
        migrate(BEFORE)
        apps = migrate(AFTER)
        rows = set(
            apps.get_model("agents", "BackupApprover").objects.values_list(
                "agent_id", "user_id", "added_by_id"
            )
        )
        # The deputy on `agent`; nobody for `other`, where the deputy is the sponsor.
        assert rows == {(agent.pk, deputy.pk, None)}
        assert other.sponsor_id == deputy.pk
    finally:
        # Back to every app's latest migration (later ones than AFTER included), as it was.
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
