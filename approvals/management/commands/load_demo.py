"""`make run`'s demo data: people, teams, agents and the privilege catalog. It lives in approvals,
the lowest app that knows every one of them (agents never imports approvals)."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from agents.dev_identity import ensure_dev_trust_domain
from agents.models import Agent, SponsorProfile, TeamProfile
from agents.services import agent_register, trust_domain_refusal
from approvals.models import Privilege
from approvals.services import privilege_save
from audit.services import Actor

# Development-only logins, printed by `make run`. load_demo refuses to run with DEBUG off.
DEMO_USERS = [
    # username, password, superuser, team
    ("admin", "custody-admin", True, None),
    ("alice", "custody-alice", False, "payments-platform"),
    ("bob", "custody-bob", False, "payments-platform"),
    ("carol", "custody-carol", False, "research-platform"),
]
DEMO_AGENTS = [
    # path, name, sponsor, team
    ("agents/invoice-bot", "Invoice bot", "alice", "payments-platform"),
    ("agents/refund-helper", "Refund helper", "alice", "payments-platform"),
    ("agents/research-agent", "Research agent", "carol", "research-platform"),
]
DEMO_RESOURCE_SERVERS = [
    # path, name, sponsor, team, the token audiences it may introspect
    (
        "resource-servers/payments-gateway",
        "Payments gateway",
        "alice",
        "payments-platform",
        ["payments-db", "payments-api"],
    ),
]

DEMO_PRIVILEGES = [
    # resource, action, risk, max duration (s), description
    ("payments-db", "read", "low", 3600, "Read the payments database"),
    ("payments-db", "write", "high", 3600, "Write to the payments database"),
    ("payments-api", "refund", "medium", 1800, "Issue refunds through the payments API"),
    ("crm", "read", "low", 3600, "Read customer records"),
    ("prod-cluster", "admin", "critical", 900, "Administer the production cluster"),
]


def demo_spiffe_id(path: str) -> str:
    return f"spiffe://{settings.CUSTODY_DEV_TRUST_DOMAIN}/{path}"


class Command(BaseCommand):
    help = "Load demo people, teams and agents (idempotent; development only)."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="allow with DEBUG off")

    def handle(self, *args, force, **options):
        if not settings.DEBUG and not force:
            raise CommandError(
                "load_demo creates well-known passwords; it runs only with DEBUG on."
            )
        if settings.DEBUG:  # never registered with DEBUG off, even with --force
            ensure_dev_trust_domain()
        actor = Actor.system("load_demo")
        User = get_user_model()
        with transaction.atomic():
            for username, password, superuser, team_name in DEMO_USERS:
                user, created = User.objects.get_or_create(
                    username=username,
                    defaults={
                        "email": f"{username}@example.com",
                        "is_staff": superuser,
                        "is_superuser": superuser,
                    },
                )
                if created:
                    user.set_password(password)
                    user.save()
                SponsorProfile.objects.get_or_create(user=user)
                if team_name:
                    team, _ = Group.objects.get_or_create(name=team_name)
                    TeamProfile.objects.get_or_create(group=team)
                    user.groups.add(team)
            workloads = [(*row, Agent.Kind.AGENT, []) for row in DEMO_AGENTS] + [
                (*row[:4], Agent.Kind.RESOURCE_SERVER, row[4]) for row in DEMO_RESOURCE_SERVERS
            ]
            for path, name, sponsor, team_name, kind, audiences in workloads:
                spiffe_id = demo_spiffe_id(path)
                refusal = trust_domain_refusal(spiffe_id)
                if refusal is not None:  # DEBUG off: the dev trust domain is never registered
                    self.stdout.write(f"Skipped {name}: {refusal}")
                    continue
                if not Agent.objects.filter(spiffe_id=spiffe_id).exists():
                    agent_register(
                        spiffe_id=spiffe_id,
                        name=name,
                        actor=actor,
                        sponsor=User.objects.get(username=sponsor),
                        team=Group.objects.get(name=team_name),
                        kind=kind,
                        introspection_audiences=audiences,
                    )
            self._load_catalog(actor)
        self.stdout.write("Demo data ready.")

    def _load_catalog(self, actor):
        for resource, action, risk, max_duration, description in DEMO_PRIVILEGES:
            if not Privilege.objects.filter(resource=resource, action=action).exists():
                privilege_save(
                    privilege=Privilege(
                        resource=resource,
                        action=action,
                        risk=risk,
                        max_duration_seconds=max_duration,
                        description=description,
                    ),
                    actor=actor,
                    created=True,
                )
        write = Privilege.objects.get(resource="payments-db", action="write")
        refund = Privilege.objects.get(resource="payments-api", action="refund")
        write.toxic_with.add(refund)
