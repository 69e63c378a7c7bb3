from celery import shared_task

from ssf import services


@shared_task(bind=True, name="ssf.tasks.push_security_event", max_retries=None)
def push_security_event(self, event_id: int) -> str:
    """One attempt; on failure Celery sends it again after the back-off (the row's
    `next_attempt_at` says when, and the sweep resends it if that message is lost)."""
    outcome, countdown = services.security_event_push(event_id=event_id)
    if outcome == "retry":
        raise self.retry(countdown=countdown)
    return outcome


@shared_task(name="ssf.tasks.sweep_security_events")
def sweep_security_events() -> int:
    return services.security_events_sweep()
