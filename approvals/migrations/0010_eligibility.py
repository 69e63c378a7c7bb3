"""Eligibility: what an agent may ask for at all, and the shipped policies that deny the rest.

So existing deployments keep working, every agent becomes eligible for each privilege it has
asked for before (granted by "migration", no limits of its own), and the "default" policy moves
to the current file (with the eligibility policies) only if its text is exactly the one shipped
before them: an admin's edit is left as it is (like 0005 and 0006), as a new version with its
revision, a new policy-set generation and an audit event.
"""

import re
from pathlib import Path

import django.core.validators
import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models
from django.db.models import F

DEFAULT = Path(__file__).resolve().parent.parent / "policies" / "default.cedar"
ELIGIBILITY_BLOCK = re.compile(
    r"// --- eligibility: what an agent may ask for at all ---\n.*?// --- end eligibility ---\n\n",
    re.DOTALL,
)


def eligible_for_what_was_asked(apps, schema_editor):
    AccessRequest = apps.get_model("approvals", "AccessRequest")
    Eligibility = apps.get_model("approvals", "Eligibility")
    pairs = AccessRequest.objects.values_list("agent_id", "privilege_id").distinct()
    Eligibility.objects.bulk_create(
        [
            Eligibility(
                agent_id=agent_id,
                privilege_id=privilege_id,
                granted_by="migration",
                reason="Asked for before eligibility existed (migration 0010).",
            )
            for agent_id, privilege_id in sorted(set(pairs))
        ],
        batch_size=1000,
    )


def ship_eligibility_policies(apps, schema_editor):
    from audit.services import Actor, record

    Policy = apps.get_model("approvals", "Policy")
    PolicyRevision = apps.get_model("approvals", "PolicyRevision")
    PolicySetState = apps.get_model("approvals", "PolicySetState")
    text = DEFAULT.read_text()
    previous = ELIGIBILITY_BLOCK.sub("", text)
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
        ("agents", "0004_agent_resource_server_role"),
        ("approvals", "0009_inbox_indexes"),
        ("audit", "0005_refuse_truncate"),  # the live record() writes to the current chain
    ]

    operations = [
        migrations.CreateModel(
            name="Eligibility",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "max_duration_seconds",
                    models.PositiveIntegerField(
                        blank=True,
                        null=True,
                        validators=[django.core.validators.MinValueValidator(1)],
                    ),
                ),
                ("environment", models.CharField(blank=True, max_length=100)),
                ("ends_at", models.DateTimeField(blank=True, null=True)),
                ("granted_by", models.CharField(max_length=254)),
                ("reason", models.CharField(blank=True, max_length=500)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("removed_at", models.DateTimeField(blank=True, null=True)),
                ("removed_by", models.CharField(blank=True, max_length=254)),
                (
                    "agent",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="eligibilities",
                        to="agents.agent",
                    ),
                ),
                (
                    "privilege",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="approvals.privilege",
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "eligibilities",
            },
        ),
        migrations.CreateModel(
            name="EligibilityRequest",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("max_duration_seconds", models.PositiveIntegerField(blank=True, null=True)),
                ("environment", models.CharField(blank=True, max_length=100)),
                ("ends_at", models.DateTimeField(blank=True, null=True)),
                ("justification", models.CharField(max_length=2000)),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "Pending"),
                            ("approved", "Approved"),
                            ("denied", "Denied"),
                        ],
                        default="pending",
                        max_length=10,
                    ),
                ),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("decided_at", models.DateTimeField(blank=True, null=True)),
                ("decided_by", models.CharField(blank=True, max_length=254)),
                ("comment", models.CharField(blank=True, max_length=1000)),
                (
                    "agent",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="eligibility_requests",
                        to="agents.agent",
                    ),
                ),
                (
                    "eligibility",
                    models.OneToOneField(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="request",
                        to="approvals.eligibility",
                    ),
                ),
                (
                    "privilege",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="approvals.privilege",
                    ),
                ),
            ],
        ),
        migrations.AddConstraint(
            model_name="eligibility",
            constraint=models.UniqueConstraint(
                condition=models.Q(("removed_at__isnull", True)),
                fields=("agent", "privilege"),
                name="eligibility_one_current",
            ),
        ),
        migrations.AddConstraint(
            model_name="eligibilityrequest",
            constraint=models.CheckConstraint(
                condition=models.Q(("status__in", ["pending", "approved", "denied"])),
                name="eligibility_request_status_valid",
            ),
        ),
        migrations.AddConstraint(
            model_name="eligibilityrequest",
            constraint=models.UniqueConstraint(
                condition=models.Q(("status", "pending")),
                fields=("agent", "privilege"),
                name="eligibility_request_one_pending",
            ),
        ),
        migrations.RunPython(eligible_for_what_was_asked, migrations.RunPython.noop),
        migrations.RunPython(ship_eligibility_policies, migrations.RunPython.noop),
    ]
