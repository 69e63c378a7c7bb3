from django.urls import path

from agents.apis import AgentMeApi, DevSvidApi

urlpatterns = [
    path("agents/me", AgentMeApi.as_view(), name="api-agent-me"),
    path("dev/svid", DevSvidApi.as_view(), name="api-dev-svid"),
]
