"""Admins name a privilege's broker (validated by the broker, every change evidence) and watch
the credentials: read-only, with each target's live, pending and failing counts on top."""

from __future__ import annotations

import os

from django import forms
from django.contrib import admin
from django.utils.html import format_html_join

from audit.services import Actor
from brokers import services
from brokers.base import BrokerConfigError, get_broker, target_variable
from brokers.models import BrokeredCredential, PrivilegeBroker


class PrivilegeBrokerForm(forms.ModelForm):
    class Meta:
        model = PrivilegeBroker
        fields = ("privilege", "kind", "config", "enabled")

    def clean(self):
        cleaned = super().clean()
        kind, config = cleaned.get("kind"), cleaned.get("config")
        if kind and config is not None:
            try:
                cleaned["config"] = get_broker(kind).validate_config(config)
            except BrokerConfigError as exc:
                self.add_error("config", str(exc))
        return cleaned


def _variables(privilege_broker: PrivilegeBroker) -> list[tuple[str, str]]:
    try:
        broker = get_broker(privilege_broker.kind)
    except BrokerConfigError:
        return []
    target = privilege_broker.target
    if not target:
        return []
    rows = []
    for part in broker.secret_parts:
        name = target_variable(target, part)
        is_set = bool(os.environ.get(name) or os.environ.get(f"{name}_FILE"))
        rows.append((name, "set" if is_set else "NOT SET"))
    return rows


@admin.register(PrivilegeBroker)
class PrivilegeBrokerAdmin(admin.ModelAdmin):
    form = PrivilegeBrokerForm
    list_display = ("privilege", "kind", "target", "enabled", "environment", "updated_at")
    list_filter = ("kind", "enabled")
    readonly_fields = ("environment",)
    raw_id_fields = ("privilege",)

    @admin.display(description="Environment (Custody's, values never shown)")
    def environment(self, obj):
        rows = _variables(obj) if obj and obj.pk else []
        if not rows:
            return "Save to see the variables this target needs."
        return format_html_join(", ", "{} ({}, or its _FILE)", rows)

    def save_model(self, request, obj, form, change):
        services.privilege_broker_save(privilege_broker=obj, actor=Actor.for_user(request.user))


@admin.register(BrokeredCredential)
class BrokeredCredentialAdmin(admin.ModelAdmin):
    """Read-only: the outbox of destructions and the record of every credential made (no
    secret: Custody never keeps one)."""

    list_display = (
        "name",
        "grant",
        "kind",
        "target",
        "state",
        "created_at",
        "expires_at",
        "end_requested_at",
        "destroyed_at",
        "attempts",
        "last_error",
    )
    list_filter = ("state", "kind", "target")
    search_fields = ("name",)
    readonly_fields = [field.name for field in BrokeredCredential._meta.fields]

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "summary": services.broker_state_summary()}
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
