from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, re_path, reverse
from django.utils import timezone
from django.utils.html import format_html

from agents import services
from agents.models import Agent, SponsorProfile, TeamProfile, TrustDomain
from audit.services import Actor
from core.errors import DomainError


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


def _clean_sponsor(sponsor):
    refusal = services.sponsor_refusal(sponsor)
    if refusal is not None:
        raise ValidationError(refusal)
    return sponsor


class ReassignSponsorForm(forms.Form):
    # Every person is listed, so choosing an inactive one is refused with the reason.
    sponsor = forms.ModelChoiceField(queryset=get_user_model().objects.order_by("username"))

    def clean_sponsor(self):
        return _clean_sponsor(self.cleaned_data["sponsor"])


class BackupApproverForm(forms.Form):
    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        label="New backup approver",
    )


def _no_object_permission_pages(request, *args, **kwargs):
    # guardian's object-permission pages were a back door to approve_for_agent (issue 10).
    raise Http404("Approval rights are managed on the agent's approvers page.")


class AgentForm(forms.ModelForm):
    """A form that leaves out the workload's role keeps it: scripted posts of the older form
    neither fail nor turn a resource server back into an agent."""

    ROLE_FIELDS = ("kind", "introspection_audiences")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.ROLE_FIELDS:
            if name in self.fields:
                self.fields[name].required = False

    def _kept(self, name):
        value = self.cleaned_data.get(name)
        if value in (None, "") and name not in self.data:
            return getattr(self.instance, name)  # the agent's own, or the model's default
        return [] if value is None else value

    def clean_kind(self):
        return self._kept("kind")

    def clean_introspection_audiences(self):
        return self._kept("introspection_audiences")

    def clean(self):
        cleaned = super().clean()
        spiffe_id = cleaned.get("spiffe_id")
        if self.instance.pk is None and spiffe_id:  # identity is fixed once registered
            refusal = services.trust_domain_refusal(spiffe_id, cleaned.get("oidc_trust_domain"))
            if refusal is not None:
                self.add_error("spiffe_id", refusal)
        return cleaned


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    """Not guardian's GuardedModelAdmin: its object-permission pages let anyone with
    change_agent give themselves approve_for_agent. Approvers have their own page."""

    form = AgentForm
    list_display = [
        "name",
        "spiffe_id",
        "kind",
        "sponsor",
        "team",
        "status",
        "review_due",
        "last_seen_at",
    ]
    list_filter = ["status", "kind", "team", ReviewOverdueFilter]
    search_fields = ["name", "spiffe_id", "sponsor__username", "sponsor__email"]
    list_select_related = ["sponsor", "team"]
    readonly_fields = ["status", "status_changed_at", "last_seen_at", "created_at", "approvers"]
    autocomplete_fields = []
    actions = ["suspend_agents", "reactivate_agents", "retire_agents", "reassign_sponsor"]

    def has_delete_permission(self, request, obj=None) -> bool:
        # Agents are retired, never deleted: their identity and audit trail stay.
        return False

    def get_readonly_fields(self, request, obj=None):
        # Identity is fixed once registered: a new SPIFFE ID (or OIDC subject) is a new agent.
        if obj is None:
            return self.readonly_fields
        fixed = [*self.readonly_fields, "spiffe_id", "oidc_trust_domain", "oidc_subject"]
        # The sponsor approves: changing it is changing who may approve.
        if not services.may_manage_approvers(request.user, obj):
            fixed.append("sponsor")
        return fixed

    def has_manage_approvers_permission(self, request, obj=None) -> bool:
        return services.may_manage_approvers(request.user, obj)

    @admin.display(description="Approvers")
    def approvers(self, agent: Agent) -> str:
        if agent.pk is None:
            return "The sponsor, once registered."
        url = reverse("admin:agents_agent_approvers", args=[agent.pk])
        names = ", ".join(
            backup.user.get_username()
            for backup in agent.backup_approvers.select_related("user").order_by("user__username")
        )
        return format_html(
            '{} (sponsor); backup: {} · <a href="{}">manage approvers</a>',
            agent.sponsor_name,
            names or "none",
            url,
        )

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        live = obj is None or obj.status != Agent.Status.RETIRED

        def refused(action: str, why: str, **data) -> None:
            # Registration refused leaves no agent to file it under: the form says why.
            if obj is not None and live:
                services.ownership_change_refused(
                    agent=obj, actor=Actor.for_user(request.user), action=action, why=why, **data
                )

        class OwnedAgentForm(form):
            """Invariant 13: an agent is registered with, and kept on, an active sponsor and a
            team with an active member."""

            def clean_team(self):
                team = self.cleaned_data["team"]
                if not live or (obj is not None and team.pk == obj.team_id):
                    return team
                refusal = services.team_refusal(
                    team, agent_name=obj.name if obj is not None else "the agent"
                )
                if refusal is not None:
                    refused("team_change", "empty_team", team=team.name)
                    raise ValidationError(refusal)
                return team

        if "sponsor" not in form.base_fields:
            return OwnedAgentForm

        class NoSelfSponsorForm(OwnedAgentForm):
            def clean_sponsor(self):
                sponsor = self.cleaned_data["sponsor"]
                if obj is not None and sponsor.pk == obj.sponsor_id:
                    return sponsor
                if services.sponsor_refusal(sponsor) is not None:
                    refused("sponsor_set", "inactive_sponsor", sponsor=sponsor.get_username())
                _clean_sponsor(sponsor)
                refusal = services.approval_rights_refusal(by=request.user, user=sponsor)
                if refusal is not None and refusal.code == "self_grant":
                    services.approvers_change_refused(
                        by=request.user,
                        user=sponsor,
                        action="sponsor_set",
                        error=refusal,
                        agent=obj,
                    )
                    raise ValidationError(refusal.message)
                return sponsor

        return NoSelfSponsorForm

    def get_urls(self):
        own = [
            path(
                "<int:agent_id>/approvers/",
                self.admin_site.admin_view(self.approvers_view),
                name="agents_agent_approvers",
            ),
            re_path(r"^(?P<object_id>[^/]+)/permissions/", _no_object_permission_pages),
        ]
        return own + super().get_urls()

    def approvers_view(self, request, agent_id: int):
        """The sponsor and backup approvers of one agent; adding and removing call the service
        (which refuses self-grants and people without 'manage approvers', and audits)."""
        agent = get_object_or_404(Agent.objects.select_related("sponsor"), pk=agent_id)
        if not self.has_view_or_change_permission(request, agent):
            raise Http404
        form = BackupApproverForm(request.POST if "add" in request.POST else None)
        status, refusal = 200, ""
        if request.method == "POST":
            try:
                if "add" in request.POST:
                    if form.is_valid():
                        person = form.cleaned_data["user"]
                        services.backup_approver_add(agent=agent, user=person, by=request.user)
                        self.message_user(request, f"{person} may now approve for {agent.name}.")
                        return redirect(request.path)
                    status = 400
                elif "remove" in request.POST:
                    remove = request.POST["remove"]
                    if not remove.isdigit():
                        raise Http404
                    person = get_object_or_404(get_user_model(), pk=int(remove))
                    services.backup_approver_remove(agent=agent, user=person, by=request.user)
                    self.message_user(request, f"{person} no longer approves for {agent.name}.")
                    return redirect(request.path)
            except DomainError as exc:
                refusal, status = exc.message, exc.status_code
        return render(
            request,
            "admin/agents/backup_approvers.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Approvers of {agent.name}",
                "agent": agent,
                "backups": agent.backup_approvers.select_related("user", "added_by").order_by(
                    "user__username"
                ),
                "form": form,
                "refusal": refusal,
                "can_manage": services.may_manage_approvers(request.user, agent),
                "opts": self.model._meta,
            },
            status=status,
        )

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
                kind=obj.kind,
                introspection_audiences=obj.introspection_audiences,
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

    @admin.action(
        description="Retire selected agents (for good: ends their grants)",
        permissions=["change"],
    )
    def retire_agents(self, request, queryset):
        self._each(request, queryset, services.agent_retire, "retired")

    @admin.action(
        description="Reassign sponsor of selected agents", permissions=["manage_approvers"]
    )
    def reassign_sponsor(self, request, queryset):
        form = ReassignSponsorForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            count = 0
            for agent in queryset.order_by("pk"):
                try:
                    services.agent_reassign_sponsor(
                        agent=agent,
                        sponsor=form.cleaned_data["sponsor"],
                        actor=Actor.for_user(request.user),
                    )
                    count += 1
                except DomainError as exc:
                    self.message_user(request, exc.message, messages.ERROR)
            self.message_user(request, f"Sponsor reassigned for {count} agent(s).")
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

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "jwks_url":
            kwargs["assume_scheme"] = "https"  # a JWKS URL typed without a scheme
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        services.trust_domain_save(
            domain=obj, actor=Actor.for_user(request.user), created=not change
        )


class SponsorProfileForm(forms.ModelForm):
    class Meta:
        model = SponsorProfile
        fields = ["user", "slack_user_id", "time_zone"]

    def clean_time_zone(self):
        time_zone = self.cleaned_data["time_zone"].strip()
        if refusal := services.time_zone_refusal(time_zone):
            raise forms.ValidationError(refusal)
        return time_zone


@admin.register(SponsorProfile)
class SponsorProfileAdmin(admin.ModelAdmin):
    form = SponsorProfileForm
    list_display = ["user", "slack_user_id", "time_zone"]
    search_fields = ["user__username", "user__email", "slack_user_id"]

    def save_model(self, request, obj, form, change):
        # The zone goes through the service (validated, audited); the rest is contact data.
        # The admin's change view runs in one transaction, so both writes land together.
        time_zone = obj.time_zone
        changes_zone = "time_zone" in form.changed_data
        if changes_zone:
            obj.time_zone = form.initial.get("time_zone") or settings.TIME_ZONE
        super().save_model(request, obj, form, change)
        if changes_zone:
            services.sponsor_profile_set_time_zone(
                user=obj.user, time_zone=time_zone, actor=Actor.for_user(request.user)
            )


@admin.register(TeamProfile)
class TeamProfileAdmin(admin.ModelAdmin):
    list_display = ["group", "slack_channel_id"]
