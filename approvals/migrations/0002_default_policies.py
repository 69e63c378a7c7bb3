from pathlib import Path

from django.db import migrations

DEFAULT = Path(__file__).resolve().parent.parent / "policies" / "default.cedar"


def load_defaults(apps, schema_editor):
    Policy = apps.get_model("approvals", "Policy")
    PolicyRevision = apps.get_model("approvals", "PolicyRevision")
    PolicySetState = apps.get_model("approvals", "PolicySetState")
    text = DEFAULT.read_text()
    policy, created = Policy.objects.get_or_create(
        name="default",
        defaults={
            "text": text,
            "description": "Custody's shipped defaults.",
            "updated_by": "migration",
        },
    )
    if created:
        PolicyRevision.objects.create(
            policy=policy, version=1, text=text, enabled=True, created_by="migration"
        )
    PolicySetState.objects.get_or_create(id=1)


class Migration(migrations.Migration):
    dependencies = [("approvals", "0001_initial")]
    operations = [migrations.RunPython(load_defaults, migrations.RunPython.noop)]
