"""`make run`'s demo data: people, teams, agents, the privilege catalog, backup approvers and
approver groups, so that every `make demo-request KIND=…` can be finished with the demo logins
(see approvals/demo.py). It lives in approvals, the lowest app that knows every one of them
(agents never imports approvals). Idempotent: a rerun adds what is missing and changes nothing
else; every change of who may approve goes through the services that record it."""

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from agents.dev_identity import ensure_dev_trust_domain
from agents.lifecycle import agents_flag_dormant
from agents.models import Agent, BackupApprover, SponsorProfile, TeamProfile
from agents.services import agent_register, backup_approver_add, trust_domain_refusal
from approvals.demo import (
    DEMO_AGENTS,
    DEMO_APPROVER_GROUPS,
    DEMO_BACKUP_APPROVERS,
    DEMO_DORMANT,
    DEMO_DORMANT_QUIET_DAYS,
    DEMO_ELIGIBILITY,
    DEMO_LEAVER,
    DEMO_ORPHAN,
    DEMO_PRIVILEGES,
    DEMO_RESOURCE_SERVERS,
    DEMO_USERS,
)
from approvals.models import Eligibility, Privilege, Review
from approvals.services import eligibility_grant, privilege_save
from approvals.services.reviews import review_open
from audit.services import Actor


def demo_spiffe_id(path: str) -> str:
    return f"spiffe://{settings.CUSTODY_DEV_TRUST_DOMAIN}/{path}"


class Command(BaseCommand):
    help = "Load demo people, teams, agents and approvers (idempotent; development only)."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="allow with DEBUG off")
        parser.add_argument(
            "--print-logins", action="store_true", help="then print the demo logins (make run)"
        )

    def handle(self, *args, force, print_logins=False, **options):
        if not settings.DEBUG and not force:
            raise CommandError(
                "load_demo creates well-known passwords; it runs only with DEBUG on."
            )
        if settings.DEBUG:  # never registered with DEBUG off, even with --force
            ensure_dev_trust_domain()
        actor = Actor.system("load_demo")
        with transaction.atomic():
            self._load_people()
            self._load_agents(actor)
            self._load_catalog(actor)
            self._load_approvers(actor)
            self._load_lifecycle(actor)
            self._load_eligibility()
            self._load_review()
        self.stdout.write("Demo data ready.")
        if print_logins:
            self.stdout.write("\n  Demo logins (username / password):")
            for username, password, _superuser, _team, role in DEMO_USERS:
                self.stdout.write(f"    {f'{username} / {password}':24} {role}")

    def _load_people(self):
        User = get_user_model()
        for username, password, superuser, team_name, _role in DEMO_USERS:
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

    def _load_agents(self, actor):
        User = get_user_model()
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

    def _load_lifecycle(self, actor):
        """An orphan and a dormant agent for the dashboard, each reached the way production
        reaches it: the sponsor deactivated (the receiver orphans the agent, agent.orphaned);
        the agent quiet for weeks (the dormancy sweep flags it, agent.dormant)."""
        User = get_user_model()
        username, team_name = DEMO_LEAVER
        leaver, created = User.objects.get_or_create(
            username=username, defaults={"email": f"{username}@example.com"}
        )
        if created:
            leaver.set_unusable_password()
            leaver.save()
            leaver.groups.add(Group.objects.get(name=team_name))
        for path, name, sponsor, team in (DEMO_ORPHAN, DEMO_DORMANT):
            spiffe_id = demo_spiffe_id(path)
            if (
                trust_domain_refusal(spiffe_id) is None
                and not Agent.objects.filter(spiffe_id=spiffe_id).exists()
            ):
                agent_register(
                    spiffe_id=spiffe_id,
                    name=name,
                    actor=actor,
                    sponsor=User.objects.get(username=sponsor),
                    team=Group.objects.get(name=team),
                )
        if leaver.is_active:
            leaver.is_active = False  # left the company: post_save orphans the reporting bot
            leaver.save()
        quiet = timezone.now() - timedelta(days=DEMO_DORMANT_QUIET_DAYS)
        # Last seen weeks ago (telemetry, not evidence); then the sweep flags it, as beat would.
        Agent.objects.filter(
            spiffe_id=demo_spiffe_id(DEMO_DORMANT[0]), last_seen_at__isnull=True
        ).update(last_seen_at=quiet)
        agents_flag_dormant()

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

    def _load_approvers(self, actor):
        """Approver groups first set on their privileges (privilege.changed), then joined (the
        membership receivers record approvers.group_member_added); backup approvers added by
        the admin through agents.services (approvers.backup_added)."""
        User = get_user_model()
        for group_name, members, privilege_names in DEMO_APPROVER_GROUPS:
            group, _ = Group.objects.get_or_create(name=group_name)
            for name in privilege_names:
                resource, action = name.split(":")
                privilege = Privilege.objects.get(resource=resource, action=action)
                if privilege.approver_group_id is None:
                    privilege.approver_group = group
                    privilege_save(privilege=privilege, actor=actor, created=False)
            group.user_set.add(*User.objects.filter(username__in=members))
        admin = User.objects.get(username="admin")
        for path, username in DEMO_BACKUP_APPROVERS:
            agent = Agent.objects.filter(spiffe_id=demo_spiffe_id(path)).order_by("-pk").first()
            person = User.objects.get(username=username)
            if agent is None or BackupApprover.objects.filter(agent=agent, user=person).exists():
                continue
            backup_approver_add(agent=agent, user=person, by=admin)

    def _load_eligibility(self):
        """Each demo agent's sponsor makes it eligible for what its presets ask for
        (eligibility.granted)."""
        for path, name, max_duration in DEMO_ELIGIBILITY:
            agent = Agent.objects.filter(spiffe_id=demo_spiffe_id(path)).first()
            resource, action = name.split(":")
            privilege = Privilege.objects.get(resource=resource, action=action)
            if (
                agent is None
                or Eligibility.objects.in_force().filter(agent=agent, privilege=privilege).exists()
            ):
                continue
            eligibility_grant(
                agent=agent,
                privilege=privilege,
                by=agent.sponsor,
                max_duration_seconds=max_duration,
                reason="Demo: what this agent's tasks need.",
            )

    def _load_review(self):
        """A review waiting for alice (the invoice bot's sponsor): its review falls due today
        and the review sweep's own step opens it (review.opened); a rerun opens no second one."""
        agent = Agent.objects.filter(spiffe_id=demo_spiffe_id(DEMO_AGENTS[0][0])).first()
        if agent is None or Review.objects.filter(agent=agent).exists():
            return
        today = timezone.localdate()
        Agent.objects.filter(pk=agent.pk).update(review_due=today)
        review_open(agent_id=agent.pk, today=today)
