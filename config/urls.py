from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.http import Http404
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from approvals import slack_views
from approvals.apis import JwksApi
from audit.apis import CheckpointKeyApi
from config import health
from core.metrics import metrics_view
from ssf.apis import TransmitterConfigurationApi

# JSON under /api/ (core.api_errors), Custody's own pages elsewhere (frontend.errors).
handler400 = "frontend.errors.bad_request"
handler403 = "frontend.errors.permission_denied"
handler404 = "frontend.errors.page_not_found"
handler500 = "frontend.errors.server_error"

# Admins sign in on the same page as everyone, so a second factor guards the admin too.
admin.site.login = secure_admin_login(admin.site.login)


def _not_here(request, *args, **kwargs):
    raise Http404("Accounts are made by admins; passwords are reset by an admin.")


# allauth's pages Custody uses: single sign-on, second factors, linking, changing a password.
# Signing up, email management and email password resets are not offered.
accounts = [
    path("login/", RedirectView.as_view(pattern_name="login", query_string=True)),
    re_path(r"^(signup|email|password/reset|confirm-email)/", _not_here),
    path("", include("allauth.urls")),
]

api_v1 = [
    path("", include("agents.urls")),
    path("", include("approvals.urls")),
    path("", include("audit.urls")),
    path("", include("ssf.urls")),
    path("", include("brokers.urls")),
]

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("version", health.version, name="version"),
    path("metrics", metrics_view, name="metrics"),
    path(".well-known/jwks.json", JwksApi.as_view(), name="jwks"),
    path(
        ".well-known/ssf-configuration",
        TransmitterConfigurationApi.as_view(),
        name="ssf-configuration",
    ),
    path(".well-known/custody-audit-key", CheckpointKeyApi.as_view(), name="audit-checkpoint-key"),
    path("admin/", admin.site.urls),
    path("accounts/", include(accounts)),
    path("slack/interactions", slack_views.interactions, name="slack-interactions"),
    path("slack/commands", slack_views.commands, name="slack-commands"),
    path("api/v1/", include(api_v1)),
    path(
        "api/schema/",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="api-schema",
    ),
    path(
        "api/docs/",
        # The split view serves Swagger UI's init script from a URL: no inline script.
        SpectacularSwaggerSplitView.as_view(
            url_name="api-schema",
            template_name="api_docs.html",
            authentication_classes=[],
            permission_classes=[],
        ),
        name="api-docs",
    ),
    path("", include("frontend.urls")),
]
