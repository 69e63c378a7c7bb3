"""Security events are written in the transaction that ends the grant or deactivates the agent
(the outbox), through the signals the lower apps send."""

from __future__ import annotations

from django.dispatch import receiver

from agents.signals import agent_deactivated
from approvals.signals import grants_ended
from ssf.services import security_events_for_agent_deactivated, security_events_for_grant_endings


@receiver(grants_ended)
def write_grant_ending_events(sender, endings, **kwargs):
    security_events_for_grant_endings(endings=endings)


@receiver(agent_deactivated)
def write_agent_deactivated_events(sender, agent, status=None, **kwargs):
    security_events_for_agent_deactivated(agent=agent, status=status or agent.status)
