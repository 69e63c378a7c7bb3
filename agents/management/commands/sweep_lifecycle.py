"""Run the agent lifecycle sweep once, now (what beat runs every CUSTODY_LIFECYCLE_SWEEP_SECONDS):
orphans past their grace period are suspended, quiet agents flagged dormant, then suspended."""

from django.core.management.base import BaseCommand

from agents.lifecycle import agents_lifecycle_sweep


class Command(BaseCommand):
    help = "Suspend orphans past their grace period; flag and suspend dormant agents."

    def handle(self, *args, **options):
        result = agents_lifecycle_sweep()
        self.stdout.write(
            f"{result['orphans_suspended']} orphan(s) suspended, "
            f"{result['dormant_flagged']} agent(s) flagged dormant, "
            f"{result['dormant_suspended']} dormant agent(s) suspended."
        )
