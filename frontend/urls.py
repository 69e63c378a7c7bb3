from django.contrib.auth import views as auth_views
from django.urls import path

from frontend import (
    inbox,
    views,
    views_eligibility,
    views_lifecycle,
    views_live,
    views_nav,
    views_posture,
    views_profile,
    views_reviews,
    views_signin,
)

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("inbox/", inbox.inbox, name="inbox"),
    path("inbox/deny/", inbox.inbox_deny, name="inbox-deny"),
    path(
        "inbox/eligibility/<int:eligibility_request_id>/decide/",
        inbox.inbox_eligibility_decide,
        name="inbox-eligibility-decide",
    ),
    path("requests/<int:request_id>/", views.request_detail, name="request"),
    path("requests/<int:request_id>/decide/", views.request_decide, name="request-decide"),
    path("step-up/", views_signin.step_up, name="step-up"),
    path("account/security/", views_signin.security, name="security"),
    path("grants/", views_live.grants, name="grants"),
    path("grants/active/", views_live.dashboard_active, name="grants-active"),
    path("grants/<int:grant_id>/revoke/", views.grant_revoke, name="grant-revoke"),
    path("agents/", views.agents, name="agents"),
    path("reviews/", views_reviews.reviews, name="reviews"),
    path("reviews/evidence/", views_reviews.review_evidence, name="review-evidence"),
    path("reviews/<int:review_id>/", views_reviews.review_detail, name="review"),
    path("agents/<int:agent_id>/", views.agent_detail, name="agent"),
    path(
        "agents/<int:agent_id>/approvers/add/",
        views.agent_approver_add,
        name="agent-approver-add",
    ),
    path(
        "agents/<int:agent_id>/approvers/<int:user_id>/remove/",
        views.agent_approver_remove,
        name="agent-approver-remove",
    ),
    path(
        "agents/<int:agent_id>/eligibility/",
        views_eligibility.agent_eligibility_grant,
        name="agent-eligibility-grant",
    ),
    path(
        "agents/<int:agent_id>/eligibility/<int:eligibility_id>/limits/",
        views_eligibility.agent_eligibility_update,
        name="agent-eligibility-update",
    ),
    path(
        "agents/<int:agent_id>/eligibility/<int:eligibility_id>/remove/",
        views_eligibility.agent_eligibility_remove,
        name="agent-eligibility-remove",
    ),
    path(
        "agents/<int:agent_id>/eligibility/requests/<int:eligibility_request_id>/decide/",
        views_eligibility.agent_eligibility_request_decide,
        name="agent-eligibility-request-decide",
    ),
    path("agents/<int:agent_id>/suspend/", views.agent_suspend, name="agent-suspend"),
    path("agents/<int:agent_id>/reactivate/", views.agent_reactivate, name="agent-reactivate"),
    path(
        "agents/<int:agent_id>/take-ownership/",
        views_lifecycle.agent_take_ownership,
        name="agent-take-ownership",
    ),
    path("posture/", views_posture.posture_dashboard, name="posture"),
    path("audit/", views.audit, name="audit"),
    path("audit/verify/", views.audit_verify, name="audit-verify"),
    path("audit/verify/status/", views.audit_verify_status, name="audit-verify-status"),
    path("profile/", views_profile.profile, name="profile"),
    path("nav/pending/", views_nav.pending_badge, name="nav-pending"),
    # allauth's sign-in: the password, then the second factor when the person has one.
    path("login/", views_signin.SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
