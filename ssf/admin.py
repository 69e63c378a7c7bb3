from django.contrib import admin

from audit.services import Actor
from ssf import services
from ssf.models import SecurityEvent, Stream


@admin.register(Stream)
class StreamAdmin(admin.ModelAdmin):
    list_display = ("receiver", "delivery", "endpoint_url", "enabled", "updated_at")
    list_filter = ("delivery", "enabled")
    raw_id_fields = ("receiver",)

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "endpoint_url":
            kwargs["assume_scheme"] = "https"  # a receiver URL typed without a scheme
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        # The form offers resource servers only (limit_choices_to), so the service's own
        # refusal of anything else cannot reach here.
        services.stream_save(stream=obj, actor=Actor.for_user(request.user))


@admin.register(SecurityEvent)
class SecurityEventAdmin(admin.ModelAdmin):
    """The outbox, read-only: what was sent to whom, and whether it arrived."""

    list_display = (
        "jti",
        "stream",
        "event_type",
        "grant_id",
        "created_at",
        "attempts",
        "delivered_at",
        "failed_at",
    )
    list_filter = ("stream", "event_type")
    readonly_fields = [field.name for field in SecurityEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
