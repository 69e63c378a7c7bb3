from django.urls import path

from brokers import apis

urlpatterns = [
    path(
        "grants/<int:grant_id>/credential",
        apis.GrantCredentialApi.as_view(),
        name="api-grant-credential",
    ),
]
