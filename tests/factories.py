"""Factories for every model, in one place."""

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from agents.models import Agent, SponsorProfile, TeamProfile, TrustDomain
from agents.services import agent_register
from audit.services import Actor, record


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"person{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = factory.django.Password("correct horse battery staple")


class SponsorProfileFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SponsorProfile
        django_get_or_create = ("user",)

    user = factory.SubFactory(UserFactory)
    slack_user_id = factory.Sequence(lambda n: f"U{n:08d}")


class GroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Group
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"team-{n}")


class TeamProfileFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TeamProfile
        django_get_or_create = ("group",)

    group = factory.SubFactory(GroupFactory)
    slack_channel_id = factory.Sequence(lambda n: f"C{n:08d}")


class TrustDomainFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TrustDomain
        django_get_or_create = ("name",)

    name = "example.test"
    kind = TrustDomain.Kind.SPIFFE
    jwks = factory.LazyFunction(lambda: {"keys": []})


class AgentFactory(factory.django.DjangoModelFactory):
    """Registered through the service, so permissions and the audit event are real."""

    class Meta:
        model = Agent

    spiffe_id = factory.Sequence(lambda n: f"spiffe://example.test/agents/agent-{n}")
    name = factory.Sequence(lambda n: f"Agent {n}")
    sponsor = factory.SubFactory(UserFactory)
    team = factory.SubFactory(GroupFactory)

    @classmethod
    def _create(cls, model_class, *args, status=None, **kwargs):
        from agents.services import agent_retire, agent_suspend
        from agents.spiffe import parse_spiffe_id

        if kwargs.get("oidc_trust_domain") is None:  # its SPIFFE trust domain is registered
            TrustDomainFactory(name=parse_spiffe_id(kwargs["spiffe_id"]).trust_domain)
        team = kwargs["team"]
        if not team.user_set.filter(is_active=True).exists():  # invariant 13: someone runs it
            team.user_set.add(UserFactory(username=f"{team.name}-operator"))
        agent = agent_register(actor=Actor.system("factory"), **kwargs)
        if status == Agent.Status.SUSPENDED:
            agent = agent_suspend(agent=agent, actor=Actor.system("factory"))
        elif status == Agent.Status.RETIRED:
            agent = agent_retire(agent=agent, actor=Actor.system("factory"))
        return agent


class ResourceServerFactory(AgentFactory):
    """A workload registered as a resource server: it may introspect tokens for its audiences."""

    spiffe_id = factory.Sequence(lambda n: f"spiffe://example.test/resource-servers/rs-{n}")
    kind = Agent.Kind.RESOURCE_SERVER
    introspection_audiences = factory.LazyFunction(lambda: ["payments-db"])


class AuditEventFactory(factory.Factory):
    """Audit events are only ever written through record()."""

    class Meta:
        model = dict

    actor = factory.LazyFunction(lambda: Actor.system("factory"))
    verb = "test.event"
    data = factory.Sequence(lambda n: {"n": n})

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return record(**kwargs)


class PrivilegeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "approvals.Privilege"
        django_get_or_create = ("resource", "action")

    resource = factory.Sequence(lambda n: f"resource-{n}")
    action = "read"
    risk = "low"
    max_duration_seconds = 3600
    approvals_required = 1


class PolicyFactory(factory.django.DjangoModelFactory):
    """Saved through the service so it is validated, versioned and audited."""

    class Meta:
        model = "approvals.Policy"

    name = factory.Sequence(lambda n: f"policy-{n}")
    text = 'permit (principal, action == Action::"request", resource);'

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        from approvals.services import policy_save

        return policy_save(
            policy_row=model_class(**kwargs), actor=Actor.system("factory"), created=True
        )


class AccessRequestFactory(factory.Factory):
    """Submitted through the service, so policy decides as it would for the API."""

    class Meta:
        model = dict

    agent = factory.SubFactory(AgentFactory)
    privilege_name = "payments-db:read"
    task_id = factory.Sequence(lambda n: f"task-{n}")
    duration_seconds = 600
    intent = factory.LazyFunction(
        lambda: {"action": "read", "target": "ledger", "justification": "reconcile"}
    )
    context = factory.LazyFunction(dict)

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        from approvals.services import access_request_submit

        return access_request_submit(**kwargs).access_request
