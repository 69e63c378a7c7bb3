import logging

from celery import shared_task

from audit.models import ChainCheck
from audit.partitions import partition_ahead
from audit.services import checkpoint_publish
from audit.verification import chain_check_execute, chain_check_start

logger = logging.getLogger("custody.audit.chain")


def chain_check_run(*, mode: str = ChainCheck.Mode.INCREMENTAL) -> ChainCheck:
    """Claim and run one walk here and now (beat's tasks, tests); if a walk is already running
    (someone's "Verify now"), that one is returned unfinished instead of starting a second."""
    check, created = chain_check_start(mode=mode)
    if not created:
        return check
    return chain_check_execute(check.pk)


@shared_task(acks_late=True)
def verify_audit_chain() -> bool:
    """On beat's schedule: walk from the last signed checkpoint to the head (seconds at 10M)."""
    return chain_check_run().ok


@shared_task(acks_late=True)
def verify_audit_chain_full() -> bool:
    """Daily on beat: the whole chain, which alone sees an edit before the last checkpoint that
    left every later hash alone (a broken link)."""
    return chain_check_run(mode=ChainCheck.Mode.FULL).ok


@shared_task(acks_late=True)
def run_chain_check(check_id: int) -> bool:
    """The walk "Verify now" claimed (`audit.verification.chain_check_request`)."""
    return chain_check_execute(check_id).ok


@shared_task(acks_late=True)
def publish_audit_checkpoint() -> int | None:
    """Sign and publish the chain head on beat's cadence (CUSTODY_CHECKPOINT_SECONDS)."""
    result = checkpoint_publish()
    return result.document["sequence"] if result.document else None


@shared_task(acks_late=True)
def keep_audit_partition_ahead() -> int | None:
    """On beat's schedule (PostgreSQL): once the head has entered the newest partition of the
    events, create the next (through the owner's function: the app's role cannot create
    tables). An append past the newest creates it itself; this keeps that off the hot path."""
    return partition_ahead()
