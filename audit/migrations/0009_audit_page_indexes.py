"""The audit page's filtered keyset pages at 10M events (issue 17): an agent's and a verb's
events in sequence order straight off an index. Built CONCURRENTLY on PostgreSQL (not atomic):
a plain CREATE INDEX would block every append to the log, so every state change, for minutes."""

from django.db import migrations, models

from audit.operations import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("audit", "0008_chain_check_job")]

    operations = [
        AddIndexOnline(
            model_name="auditevent",
            index=models.Index(fields=["agent_id", "sequence"], name="audit_agent_sequence"),
        ),
        AddIndexOnline(
            model_name="auditevent",
            index=models.Index(fields=["verb", "sequence"], name="audit_verb_sequence"),
        ),
    ]
