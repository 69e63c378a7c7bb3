"""Celery tasks about agents' lives: thin, idempotent callers of agents/lifecycle.py."""

from __future__ import annotations

from celery import shared_task

from agents import lifecycle


@shared_task(acks_late=True)
def sweep_agent_lifecycle() -> dict:
    """Suspend orphans past their grace period; flag, then suspend, dormant agents."""
    return lifecycle.agents_lifecycle_sweep()
