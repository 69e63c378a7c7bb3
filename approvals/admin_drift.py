"""Drift flags in the admin: read-only evidence (a flag is written only by the tool-call service,
with its `grant.drift_flagged` event), filtered by kind, agent and date, each linked to its
grant, agent and request page."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from approvals.models import DriftFlag


class DriftKindFilter(admin.SimpleListFilter):
    """A flag holds a list of kinds: those holding the chosen one."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return DriftFlag.Kind.choices

    def queryset(self, request, queryset):
        kind = self.value()
        if kind not in DriftFlag.Kind.values:
            return queryset
        return queryset.with_kind(kind)


@admin.register(DriftFlag)
class DriftFlagAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "created_at",
        "agent_link",
        "grant_link",
        "kinds_shown",
        "outcome",
        "tool",
        "target",
        "policies",
        "request_page",
    ]
    list_filter = [
        DriftKindFilter,
        "outcome",
        ("grant__agent", admin.RelatedOnlyFieldListFilter),
        "created_at",
    ]
    date_hierarchy = "created_at"
    search_fields = ["tool", "target", "grant__agent__name", "grant__agent__spiffe_id"]
    list_select_related = ["grant", "grant__agent"]
    readonly_fields = [
        "grant_link",
        "agent_link",
        "kinds_shown",
        "outcome",
        "tool",
        "target",
        "policies",
        "created_at",
        "request_page",
    ]
    fields = readonly_fields
    ordering = ["-created_at", "-pk"]
    actions = None

    @admin.display(description="agent", ordering="grant__agent__name")
    def agent_link(self, flag: DriftFlag):
        agent = flag.grant.agent
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:agents_agent_change", args=[agent.pk]), agent
        )

    @admin.display(description="grant", ordering="grant")
    def grant_link(self, flag: DriftFlag):
        return format_html(
            '<a href="{}">Grant #{} ({})</a>',
            reverse("admin:approvals_grant_change", args=[flag.grant_id]),
            flag.grant_id,
            flag.grant.scope,
        )

    @admin.display(description="kinds")
    def kinds_shown(self, flag: DriftFlag) -> str:
        return ", ".join(flag.kind_labels()) or "—"

    @admin.display(description="policies")
    def policies(self, flag: DriftFlag) -> str:
        return ", ".join(flag.policy_ids) or "—"

    @admin.display(description="request page")
    def request_page(self, flag: DriftFlag):
        return format_html(
            '<a href="{}">request #{}</a>',
            reverse("request", args=[flag.grant.access_request_id]),
            flag.grant.access_request_id,
        )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
