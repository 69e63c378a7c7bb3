from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = [
        "sequence",
        "occurred_at",
        "actor_type",
        "actor_id",
        "verb",
        "agent_id",
        "access_request_id",
        "grant_id",
    ]
    list_filter = ["verb", "actor_type"]
    search_fields = ["actor_id", "verb"]
    ordering = ["-sequence"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
