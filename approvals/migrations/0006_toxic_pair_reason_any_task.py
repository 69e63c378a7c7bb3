"""Ship the toxic-pair reason that says what Custody now checks: every privilege the agent and
its delegation chain hold live, in any task (no longer only the task the agent names).

Like 0005: an existing "default" policy moves to the current file only if its text is exactly
the one shipped before (an admin's edit is left as it is), as a new version with its revision, a
new policy-set generation and an audit event.
"""

from pathlib import Path

from django.db import migrations
from django.db.models import F

DEFAULT = Path(__file__).resolve().parent.parent / "policies" / "default.cedar"
PREVIOUS_REASON = (
    '@reason("Together with a privilege already held in this task it forms a toxic pair, '
    'so people decide.")'
)
REASON = (
    '@reason("Together with a privilege the agent or its delegation chain already holds, '
    'in any task, it forms a toxic pair, so people decide.")'
)


def ship_toxic_pair_reason(apps, schema_editor):
    from audit.services import Actor, record

    Policy = apps.get_model("approvals", "Policy")
    PolicyRevision = apps.get_model("approvals", "PolicyRevision")
    PolicySetState = apps.get_model("approvals", "PolicySetState")
    text = DEFAULT.read_text()
    previous = text.replace(REASON, PREVIOUS_REASON)
    policy = Policy.objects.select_for_update(no_key=True).filter(name="default").first()
    if policy is None or previous == text or policy.text.strip() != previous.strip():
        return
    policy.text = text
    policy.version += 1
    policy.updated_by = "migration"
    policy.save(update_fields=["text", "version", "updated_by", "updated_at"])
    PolicyRevision.objects.create(
        policy=policy,
        version=policy.version,
        text=text,
        enabled=policy.enabled,
        created_by="migration",
    )
    PolicySetState.objects.get_or_create(id=1)
    PolicySetState.objects.filter(id=1).update(generation=F("generation") + 1)
    record(
        actor=Actor.system("migration"),
        verb="policy.changed",
        data={
            "policy": policy.name,
            "version": policy.version,
            "enabled": policy.enabled,
            "text": text,
        },
    )


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0005_delegation_policies"),
        ("audit", "0005_refuse_truncate"),  # the live record() writes to the current chain
    ]
    operations = [migrations.RunPython(ship_toxic_pair_reason, migrations.RunPython.noop)]
