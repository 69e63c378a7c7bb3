from celery import shared_task

from brokers import services


@shared_task(bind=True, name="brokers.tasks.destroy_credential", max_retries=None)
def destroy_credential(self, credential_id: int) -> str:
    """One attempt; on failure Celery sends it again after the back-off (the row's
    `next_attempt_at` says when, and the sweep resends it if that message is lost)."""
    outcome, countdown = services.credential_destroy(credential_id=credential_id)
    if outcome == "retry":
        raise self.retry(countdown=countdown)
    return outcome


@shared_task(name="brokers.tasks.sweep_credentials")
def sweep_credentials() -> int:
    return services.credentials_sweep()
