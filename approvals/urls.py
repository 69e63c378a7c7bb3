from django.urls import path

from approvals import apis, eligibility_apis, exchange_apis

urlpatterns = [
    path("requests", apis.RequestCreateApi.as_view(), name="api-request-create"),
    path("requests/<int:request_id>", apis.long_poll_request_detail, name="api-request"),
    path(
        "requests/<int:request_id>/cancel",
        apis.RequestCancelApi.as_view(),
        name="api-request-cancel",
    ),
    path(
        "requests/<int:request_id>/decisions",
        apis.DecisionCreateApi.as_view(),
        name="api-request-decide",
    ),
    path("approvals/pending", apis.PendingApprovalsApi.as_view(), name="api-pending"),
    path("grants", apis.GrantListApi.as_view(), name="api-grants"),
    path("grants/<int:grant_id>", apis.GrantDetailApi.as_view(), name="api-grant"),
    path("grants/<int:grant_id>/token", apis.GrantTokenApi.as_view(), name="api-grant-token"),
    path("grants/<int:grant_id>/extend", apis.GrantExtendApi.as_view(), name="api-grant-extend"),
    path(
        "grants/<int:grant_id>/complete", apis.GrantCompleteApi.as_view(), name="api-grant-complete"
    ),
    path(
        "grants/<int:grant_id>/tool-calls",
        apis.GrantToolCallApi.as_view(),
        name="api-grant-tool-calls",
    ),
    path("privileges", eligibility_apis.PrivilegeListApi.as_view(), name="api-privileges"),
    path("eligibility", eligibility_apis.EligibilityListApi.as_view(), name="api-eligibility"),
    path(
        "eligibility/requests",
        eligibility_apis.EligibilityRequestCreateApi.as_view(),
        name="api-eligibility-request-create",
    ),
    path(
        "eligibility/requests/<int:eligibility_request_id>",
        eligibility_apis.EligibilityRequestDetailApi.as_view(),
        name="api-eligibility-request",
    ),
    path("introspect", apis.IntrospectApi.as_view(), name="api-introspect"),
    path("token", exchange_apis.TokenExchangeApi.as_view(), name="api-token"),
]
