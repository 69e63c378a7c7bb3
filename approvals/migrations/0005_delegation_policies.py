"""Ship the delegation defaults to databases migrated before them.

0002 loads approvals/policies/default.cedar into the "default" policy only on the first migrate.
This moves an existing "default" row to the current file, as a new version with its revision,
a new policy-set generation and an audit event, but only if an admin has not edited it: a row
whose text is not the text shipped before delegation is left exactly as it is.
"""

from pathlib import Path

from django.db import migrations
from django.db.models import F

DEFAULT = Path(__file__).resolve().parent.parent / "policies" / "default.cedar"

# default.cedar as shipped by 0002, before the delegation policies.
PREVIOUS_SHIPPED_TEXT = """
// Custody's default policy set. Three questions, in order: is it forbidden (any matching
// `forbid` on "request" denies); may it be granted now ("auto_approve" permitted); may people
// decide ("request" permitted). Nothing permitting means denied.
// @reason is shown to approvers; @approvals raises the number of distinct approvers needed.

@id("active-agents-may-request")
@reason("Active agents may ask for catalogued privileges; the people who answer for the agent decide.")
permit (principal, action == Action::"request", resource)
when { principal.status == "active" };

@id("inactive-agents-forbidden")
@reason("A suspended or retired agent gets nothing.")
forbid (principal, action, resource)
unless { principal.status == "active" };

@id("low-risk-short-read-automatic")
@reason("Low-risk, read-only access for 15 minutes or less is granted automatically.")
permit (principal, action == Action::"auto_approve", resource)
when {
  resource.risk == "low" &&
  resource.action == "read" &&
  context.duration_seconds <= 900 &&
  !context.delegated &&
  !context.is_extension
};

@id("high-risk-two-approvals")
@approvals("2")
@reason("High and critical privileges need two distinct approvers.")
permit (principal, action == Action::"request", resource)
when { resource.risk_level >= 3 };

@id("critical-never-automatic")
@reason("Critical privileges are never granted automatically.")
forbid (principal, action == Action::"auto_approve", resource)
when { resource.risk_level >= 4 };

@id("toxic-pair-needs-people")
@reason("Together with a privilege already held in this task it forms a toxic pair, so people decide.")
forbid (principal, action == Action::"auto_approve", resource)
when { resource.toxic_with.containsAny(context.held_privileges) };
"""


def ship_delegation_defaults(apps, schema_editor):
    # The live record(): the change joins the one hash chain like any other policy change.
    from audit.services import Actor, record

    Policy = apps.get_model("approvals", "Policy")
    PolicyRevision = apps.get_model("approvals", "PolicyRevision")
    PolicySetState = apps.get_model("approvals", "PolicySetState")
    policy = Policy.objects.select_for_update().filter(name="default").first()
    if policy is None or policy.text.strip() != PREVIOUS_SHIPPED_TEXT.strip():
        return
    text = DEFAULT.read_text()
    if text.strip() == policy.text.strip():
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
        ("approvals", "0004_slack"),
        ("audit", "0002_append_only"),
    ]
    operations = [migrations.RunPython(ship_delegation_defaults, migrations.RunPython.noop)]
