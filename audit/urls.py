from django.urls import path

from audit.apis import CheckpointLatestApi

urlpatterns = [
    path(
        "audit/checkpoints/latest",
        CheckpointLatestApi.as_view(),
        name="api-audit-checkpoint-latest",
    ),
]
