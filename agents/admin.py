from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.shortcuts import render
from django.utils import timezone
from guardian.admin import GuardedModelAdmin

from agents import services
from agents.models import Agent, SponsorProfile, TeamProfile, TrustDomain
from audit.services import Actor
from config.errors import DomainError


class ReviewOverdueFilter(admin.SimpleListFilter):
    title = "review"
    parameter_name = "review"

    def lookups(self, request, model_admin):
        return [("overdue", "Overdue"), ("due_30", "Due within 30 days")]

    def queryset(self, request, queryset):
        today = timezone.localdate()
        if self.value() == "overdue":
            return queryset.filter(review_due__lt=today)
        if self.value() == "due_30":
            return queryset.filter(
                review_due__gte=today, review_due__lte=today + timezone.timedelta(days=30)
            )
        return queryset


class ReassignSponsorForm(forms.Form):
    sponsor = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username")
    )


@admin.register(Agent)
class AgentAdmin(GuardedModelAdmin):
    list_display = ["name", "spiffe_id", "sponsor", "team", "status", "review_due", "last_seen_at"]
    list_filter = ["status", "team", ReviewOverdueFilter]
    search_fields = ["name", "spiffe_id", "sponsor__username", "sponsor__email"]
    list_select_related = ["sponsor", "team"]
    readonly_fields = ["status", "status_changed_at", "last_seen_at", "created_at"]
    autocomplete_fields = []
    actions = ["suspend_agents", "reactivate_agents", "reassign_sponsor"]

    def get_readonly_fields(self, request, obj=None):
        # Identity is fixed once registered: a new SPIFFE ID (or OIDC subject) is a new agent.
        if obj is None:
            return self.readonly_fields
        return [*self.readonly_fields, "spiffe_id", "oidc_trust_domain", "oidc_subject"]

    def save_model(self, request, obj, form, change):
        actor = Actor.for_user(request.user)
        if not change:
            agent = services.agent_register(
                spiffe_id=obj.spiffe_id,
                name=obj.name,
                description=obj.description,
                sponsor=obj.sponsor,
                team=obj.team,
                review_due=obj.review_due,
                max_delegation_depth=obj.max_delegation_depth,
                oidc_trust_domain=obj.oidc_trust_domain,
                oidc_subject=obj.oidc_subject,
                actor=actor,
            )
            obj.pk = agent.pk
            return
        current = Agent.objects.get(pk=obj.pk)
        if "sponsor" in form.changed_data:
            services.agent_reassign_sponsor(agent=current, sponsor=obj.sponsor, actor=actor)
        if "team" in form.changed_data:
            services.agent_change_team(agent=current, team=obj.team, actor=actor)
        editable = {
            name: getattr(obj, name)
            for name in services.EDITABLE_FIELDS
            if name in form.changed_data
        }
        if editable:
            services.agent_update(agent=current, actor=actor, **editable)

    def _each(self, request, queryset, service, done: str):
        count = 0
        for agent in queryset.order_by("pk"):
            try:
                service(
                    agent=agent,
                    actor=Actor.for_user(request.user),
                    reason=f"admin action by {request.user.get_username()}",
                )
                count += 1
            except DomainError as exc:
                self.message_user(request, exc.message, messages.WARNING)
        self.message_user(request, f"{count} agent(s) {done}.", messages.SUCCESS)

    @admin.action(
        description="Suspend selected agents (kill switch: ends their grants)",
        permissions=["change"],
    )
    def suspend_agents(self, request, queryset):
        self._each(request, queryset, services.agent_suspend, "suspended")

    @admin.action(description="Reactivate selected agents", permissions=["change"])
    def reactivate_agents(self, request, queryset):
        self._each(request, queryset, services.agent_reactivate, "reactivated")

    @admin.action(description="Reassign sponsor of selected agents", permissions=["change"])
    def reassign_sponsor(self, request, queryset):
        form = ReassignSponsorForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for agent in queryset.order_by("pk"):
                services.agent_reassign_sponsor(
                    agent=agent,
                    sponsor=form.cleaned_data["sponsor"],
                    actor=Actor.for_user(request.user),
                )
            self.message_user(request, f"Sponsor reassigned for {queryset.count()} agent(s).")
            return None
        return render(
            request,
            "admin/agents/reassign_sponsor.html",
            {
                **self.admin_site.each_context(request),
                "title": "Reassign sponsor",
                "agents": queryset,
                "form": form,
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                "opts": self.model._meta,
            },
        )


@admin.register(TrustDomain)
class TrustDomainAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "issuer", "jwks_url", "enabled"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "issuer"]

    def save_model(self, request, obj, form, change):
        services.trust_domain_save(
            domain=obj, actor=Actor.for_user(request.user), created=not change
        )


@admin.register(SponsorProfile)
class SponsorProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "slack_user_id", "time_zone"]
    search_fields = ["user__username", "user__email", "slack_user_id"]


@admin.register(TeamProfile)
class TeamProfileAdmin(admin.ModelAdmin):
    list_display = ["group", "slack_channel_id"]
