import logging

from celery import shared_task

from audit.models import ChainCheck
from audit.services import checkpoint_publish, verify_chain

logger = logging.getLogger("custody.audit.chain")


def chain_check_run() -> ChainCheck:
    report = verify_chain()
    check = ChainCheck.objects.create(
        verified=report.verified,
        first_bad_sequence=report.first_bad_sequence,
        problem=report.problem[:200],
    )
    if not check.ok:  # whoever is on call must hear of it, not only the audit page
        logger.error(
            "Audit chain BROKEN at sequence %s: %s",
            report.first_bad_sequence,
            report.problem,
            extra={"event": "audit.chain_broken", "first_bad_sequence": report.first_bad_sequence},
        )
    return check


@shared_task(acks_late=True)
def verify_audit_chain() -> bool:
    """Walk the whole chain on a schedule; the audit page shows the latest result."""
    return chain_check_run().ok


@shared_task(acks_late=True)
def publish_audit_checkpoint() -> int | None:
    """Sign and publish the chain head on beat's cadence (CUSTODY_CHECKPOINT_SECONDS)."""
    result = checkpoint_publish()
    return result.document["sequence"] if result.document else None
