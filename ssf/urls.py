from django.urls import path

from ssf import apis

urlpatterns = [
    path("ssf/stream", apis.StreamApi.as_view(), name="api-ssf-stream"),
    path("ssf/poll", apis.PollApi.as_view(), name="api-ssf-poll"),
]
