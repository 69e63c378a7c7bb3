from django import forms
from django.contrib import admin, messages

from approvals import policy, services
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


@admin.register(Privilege)
class PrivilegeAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "risk",
        "max_duration_seconds",
        "approvals_required",
        "approver_group",
        "slack_max_risk",
        "enabled",
    ]
    list_filter = ["risk", "enabled"]
    search_fields = ["resource", "action", "description"]
    filter_horizontal = ["toxic_with"]

    def save_model(self, request, obj, form, change):
        services.privilege_save(
            privilege=obj, actor=Actor.for_user(request.user), created=not change
        )


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
        "approvals_required",
        "created_at",
        "decision_deadline",
    ]
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
