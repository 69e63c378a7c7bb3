from django import forms
from django.contrib import admin, messages

from agents.admin import AgentAdmin as AgentAdminBase
from agents.models import Agent
from approvals import approvers, policy, services
from approvals.models import (
    AccessRequest,
    Decision,
    Grant,
    Policy,
    PolicyRevision,
    Privilege,
    SigningKey,
)
from approvals.tokens import signing_key_rotate
from audit.services import Actor
from core.errors import DomainError


class ReadOnlyAdmin(admin.ModelAdmin):
    """Evidence-bearing rows change only through services, never by editing in admin."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


SHORTFALLS_LISTED = 5


def warn_shortfalls(request, shortfalls) -> None:
    """An admin message naming the agents whose requests could never gather their approvals."""
    if not shortfalls:
        return
    listed = "; ".join(str(shortfall) for shortfall in shortfalls[:SHORTFALLS_LISTED])
    more = len(shortfalls) - SHORTFALLS_LISTED
    messages.warning(
        request,
        f"Approval count cannot be met ({len(shortfalls)}): {listed}"
        + (f"; and {more} more" if more > 0 else "")
        + ". Such requests escalate to the team as soon as they are filed: add backup "
        "approvers or an approver group.",
    )


@admin.register(Privilege)
class PrivilegeAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "risk",
        "max_duration_seconds",
        "approvals_needed",
        "approver_group",
        "slack_max_risk",
        "enabled",
    ]
    list_filter = ["risk", "enabled"]
    search_fields = ["resource", "action", "description"]
    filter_horizontal = ["toxic_with"]
    readonly_fields = ["approvals_needed"]

    @admin.display(description="Approvals needed")
    def approvals_needed(self, privilege: Privilege) -> str:
        """The one rule (the larger of the privilege's count and a policy's @approvals), with
        its reason, for a plain request."""
        if privilege.pk is None:
            return "Shown once saved."
        return approvers.count_rule(privilege, approvers.typical_outcome(privilege))

    def changelist_view(self, request, extra_context=None):
        if request.method == "GET":
            warn_shortfalls(
                request,
                approvers.approval_shortfalls(
                    agents=Agent.objects.filter(status=Agent.Status.ACTIVE),
                    privileges=Privilege.objects.filter(enabled=True),
                ),
            )
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        privilege = self.get_object(request, object_id)
        if request.method == "GET" and privilege is not None:
            warn_shortfalls(
                request,
                approvers.approval_shortfalls(
                    agents=Agent.objects.filter(status=Agent.Status.ACTIVE),
                    privileges=[privilege],
                ),
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        services.privilege_save(
            privilege=obj, actor=Actor.for_user(request.user), created=not change
        )
        warn_shortfalls(
            request,
            approvers.approval_shortfalls(
                agents=Agent.objects.filter(status=Agent.Status.ACTIVE), privileges=[obj]
            ),
        )


# The agent's admin lives in `agents`, which knows nothing of privileges: the approval-count
# warnings are added here, where both are known.
admin.site.unregister(Agent)


@admin.register(Agent)
class AgentAdmin(AgentAdminBase):
    readonly_fields = [*AgentAdminBase.readonly_fields, "approval_coverage"]

    @admin.display(description="Approval count")
    def approval_coverage(self, agent: Agent) -> str:
        if agent.pk is None:
            return "Checked once registered."
        shortfalls = approvers.approval_shortfalls(
            agents=[agent], privileges=Privilege.objects.filter(enabled=True)
        )
        if not shortfalls:
            return "Every privilege's approval count can be met."
        return "Cannot be met: " + "; ".join(
            f"{s.privilege_name} needs {s.required}, {s.eligible} may approve" for s in shortfalls
        )

    def changelist_view(self, request, extra_context=None):
        if request.method == "GET":
            warn_shortfalls(
                request,
                approvers.approval_shortfalls(
                    agents=Agent.objects.filter(status=Agent.Status.ACTIVE),
                    privileges=Privilege.objects.filter(enabled=True),
                ),
            )
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        agent = self.get_object(request, object_id)
        if request.method == "GET" and agent is not None:
            warn_shortfalls(
                request,
                approvers.approval_shortfalls(
                    agents=[agent], privileges=Privilege.objects.filter(enabled=True)
                ),
            )
        return super().change_view(request, object_id, form_url, extra_context)


class PolicyForm(forms.ModelForm):
    class Meta:
        model = Policy
        fields = ["name", "description", "text", "enabled"]
        widgets = {
            "text": forms.Textarea(
                attrs={"rows": 24, "cols": 100, "style": "font-family: monospace"}
            )
        }

    def clean_text(self):
        text = self.cleaned_data["text"]
        try:
            policy.validate_policy_text(text)
        except policy.PolicyTextError as exc:
            raise forms.ValidationError(["Cedar says: " + error for error in exc.errors])
        return text


class PolicyRevisionInline(admin.TabularInline):
    model = PolicyRevision
    extra = 0
    can_delete = False
    readonly_fields = ["version", "enabled", "created_at", "created_by", "text"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    form = PolicyForm
    list_display = ["name", "version", "enabled", "updated_at", "updated_by"]
    list_filter = ["enabled"]
    search_fields = ["name", "text"]
    readonly_fields = ["version", "updated_at", "updated_by"]
    inlines = [PolicyRevisionInline]
    actions = None  # bulk delete would bypass the audited service

    def save_model(self, request, obj, form, change):
        services.policy_save(policy_row=obj, actor=Actor.for_user(request.user), created=not change)

    def delete_model(self, request, obj):
        services.policy_delete(policy_row=obj, actor=Actor.for_user(request.user))


class DecisionInline(admin.TabularInline):
    model = Decision
    extra = 0
    can_delete = False
    readonly_fields = ["approver", "verdict", "channel", "comment", "created_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(AccessRequest)
class AccessRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "agent",
        "privilege",
        "task_id",
        "status",
        "policy_outcome",
        "approvals",
        "created_at",
        "decision_deadline",
    ]

    @admin.display(description="Approvals", ordering="approvals_required")
    def approvals(self, access_request: AccessRequest) -> str:
        return access_request.approvals_rule

    list_filter = ["status", "policy_outcome", "privilege"]
    search_fields = ["agent__name", "agent__spiffe_id", "task_id"]
    list_select_related = ["agent", "privilege"]
    inlines = [DecisionInline]


@admin.register(Grant)
class GrantAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "agent",
        "scope",
        "task_id",
        "issued_at",
        "expires_at",
        "revoked_at",
        "revoke_reason",
        "parent",
    ]
    list_filter = ["revoke_reason", "privilege"]
    search_fields = ["agent__name", "agent__spiffe_id", "task_id"]
    list_select_related = ["agent"]
    actions = ["revoke_grants"]

    def has_revoke_permission(self, request):
        return request.user.has_perm("approvals.change_grant") or request.user.is_superuser

    @admin.action(
        description="Revoke selected grants (and everything delegated from them)",
        permissions=["revoke"],
    )
    def revoke_grants(self, request, queryset):
        ended = 0
        for grant in queryset.order_by("pk"):
            try:
                services.grant_revoke(
                    grant=grant, actor=Actor.for_user(request.user), detail="revoked in admin"
                )
                ended += 1
            except DomainError as exc:
                self.message_user(request, exc.message, messages.WARNING)
        self.message_user(request, f"{ended} grant(s) revoked.")


@admin.register(SigningKey)
class SigningKeyAdmin(ReadOnlyAdmin):
    list_display = ["kid", "algorithm", "state", "created_at"]
    exclude = ["encrypted_private_key"]
    actions = ["rotate"]

    def has_rotate_permission(self, request):
        return request.user.is_superuser

    @admin.action(
        description="Rotate: make a new current key (selection ignored)", permissions=["rotate"]
    )
    def rotate(self, request, queryset):
        key = signing_key_rotate(actor=Actor.for_user(request.user))
        self.message_user(request, f"New signing key {key.kid} is current.")
