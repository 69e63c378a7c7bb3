"""What every benchmark seeds after its agents and privileges: eligibility. The shipped policy
denies a request for anything an agent is not eligible for (issue 13), so a benchmark that
measures submits makes each of its agents eligible, without limits, for every privilege.
Written directly (bulk_create, granted_by "bench"), not through the audited service: a
benchmark's seed is not evidence."""


def make_every_agent_eligible() -> int:
    from agents.models import Agent
    from approvals.models import Eligibility, Privilege

    rows = [
        Eligibility(agent=agent, privilege=privilege, granted_by="bench")
        for agent in Agent.objects.exclude(status=Agent.Status.RETIRED)
        for privilege in Privilege.objects.all()
    ]
    Eligibility.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)
