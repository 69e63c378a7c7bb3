"""Reviews in the admin: read-only (a review changes only through its page and the sweep, which
audit every step); a link to the review's page, where an admin may complete it."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from approvals.models import Review


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["id", "agent", "due", "status", "escalated_at", "reviewer", "verdict", "page"]
    list_filter = ["status", "verdict"]
    search_fields = ["agent__name", "agent__spiffe_id", "reviewer__username"]
    list_select_related = ["agent", "reviewer"]
    ordering = ["-due", "-pk"]

    @admin.display(description="page")
    def page(self, review: Review):
        return format_html('<a href="{}">open</a>', reverse("review", args=[review.pk]))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
