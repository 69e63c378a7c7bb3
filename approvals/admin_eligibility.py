"""Eligibility in Django admin: made eligible through the add form, its limits changed through
the change form, removed by an action, all through the services (permission, limits, audit).
Nothing else is edited and nothing deleted here: a removed eligibility stays as history."""

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import reverse

from approvals import services
from approvals.models import Eligibility, EligibilityRequest
from approvals.services.eligibility import NOT_A_MANAGER
from core.errors import DomainError

LIMITS = ("max_duration_seconds", "environment", "ends_at")


class EligibilityAddForm(forms.ModelForm):
    class Meta:
        model = Eligibility
        fields = ["agent", "privilege", "max_duration_seconds", "environment", "ends_at", "reason"]

    def clean(self):
        cleaned = super().clean()
        agent = cleaned.get("agent")
        if agent is not None and not services.may_manage_eligibility(self.request_user, agent):
            raise forms.ValidationError(NOT_A_MANAGER)
        return cleaned

    def validate_constraints(self, exclude=None):
        pass  # the service says "already eligible" in a sentence, as a 409 would


@admin.register(Eligibility)
class EligibilityAdmin(admin.ModelAdmin):
    form = EligibilityAddForm
    list_display = [
        "agent",
        "privilege",
        "max_duration_seconds",
        "environment",
        "ends_at",
        "granted_by",
        "created_at",
        "removed_at",
        "removed_by",
    ]
    list_filter = ["privilege", ("removed_at", admin.EmptyFieldListFilter)]
    search_fields = ["agent__name", "agent__spiffe_id"]
    list_select_related = ["agent", "privilege"]
    actions = ["remove_eligibility"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        form.request_user = request.user
        return form

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        everything = [field.name for field in Eligibility._meta.fields]
        if obj.removed_at is not None:
            return everything
        return [name for name in everything if name not in LIMITS]

    def has_change_permission(self, request, obj=None):
        # Its limits, while it is not removed; the service decides who (per agent).
        if obj is not None and obj.removed_at is not None:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            try:
                services.eligibility_update(
                    eligibility_id=obj.pk,
                    agent=obj.agent,
                    by=request.user,
                    max_duration_seconds=data.get("max_duration_seconds"),
                    environment=data.get("environment") or "",
                    ends_at=data.get("ends_at"),
                    reason="changed in admin",
                )
            except DomainError as exc:
                obj.refused = exc.message
            return
        try:
            created = services.eligibility_grant(
                agent=data["agent"],
                privilege=data["privilege"],
                by=request.user,
                max_duration_seconds=data.get("max_duration_seconds"),
                environment=data.get("environment") or "",
                ends_at=data.get("ends_at"),
                reason=data.get("reason") or "",
            )
        except DomainError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        obj.pk = created.pk

    def response_add(self, request, obj, post_url_continue=None):
        if obj.pk is None:  # the service refused; its sentence is the message shown
            return HttpResponseRedirect(reverse("admin:approvals_eligibility_add"))
        return super().response_add(request, obj, post_url_continue)

    def log_addition(self, request, obj, message):
        if obj.pk is not None:
            super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        if not getattr(obj, "refused", ""):
            super().log_change(request, obj, message)

    def response_change(self, request, obj):
        if refused := getattr(obj, "refused", ""):  # the service's sentence, on the same form
            self.message_user(request, refused, messages.ERROR)
            return HttpResponseRedirect(
                reverse("admin:approvals_eligibility_change", args=[obj.pk])
            )
        return super().response_change(request, obj)

    def has_remove_permission(self, request):
        return True  # the service decides per agent: sponsor, manage_agent, or superuser

    @admin.action(
        description="Remove selected eligibility (kept as history)", permissions=["remove"]
    )
    def remove_eligibility(self, request, queryset):
        removed = 0
        for eligibility in queryset.select_related("agent").order_by("pk"):
            try:
                services.eligibility_remove(
                    eligibility_id=eligibility.pk,
                    agent=eligibility.agent,
                    by=request.user,
                    reason="removed in admin",
                )
                removed += 1
            except DomainError as exc:
                self.message_user(request, exc.message, messages.WARNING)
        self.message_user(request, f"{removed} eligibility removed.")


@admin.register(EligibilityRequest)
class EligibilityRequestAdmin(admin.ModelAdmin):
    list_display = ["agent", "privilege", "status", "created_at", "decided_by", "decided_at"]
    list_filter = ["status", "privilege"]
    search_fields = ["agent__name", "agent__spiffe_id"]
    list_select_related = ["agent", "privilege"]
    actions = ["approve", "deny"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_decide_permission(self, request):
        return True  # the service applies may_approve per request

    def _decide(self, request, queryset, verdict: str) -> None:
        decided = 0
        for eligibility_request in queryset.order_by("pk"):
            try:
                services.eligibility_request_decide(
                    eligibility_request_id=eligibility_request.pk,
                    by=request.user,
                    verdict=verdict,
                    comment=f"{verdict}d in admin",
                    channel="admin",
                )
                decided += 1
            except DomainError as exc:
                self.message_user(request, exc.message, messages.WARNING)
        self.message_user(request, f"{decided} eligibility request(s) {verdict}d.")

    @admin.action(description="Approve selected eligibility requests", permissions=["decide"])
    def approve(self, request, queryset):
        self._decide(request, queryset, "approve")

    @admin.action(description="Deny selected eligibility requests", permissions=["decide"])
    def deny(self, request, queryset):
        self._decide(request, queryset, "deny")
