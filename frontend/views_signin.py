"""Proving who you are again (step-up before a critical approval), and the Security page where a
person sets up a second factor and links single sign-on. The sign-in itself is allauth's
(frontend/sso.py, templates/registration/login.html)."""

from __future__ import annotations

import contextlib

from allauth.account.views import LoginView
from allauth.mfa.base.forms import ReauthenticateForm
from allauth.mfa.webauthn.internal import auth as webauthn
from allauth.socialaccount.models import SocialAccount
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from approvals import selectors
from core.errors import DomainError
from core.sessions import mark_fresh_login
from frontend import auth
from frontend.decorators import login_required
from frontend.forms_mfa import PasskeyReauthenticateForm
from frontend.views import PENDING_DECISION_KEY, _decide


def sso_provider() -> dict | None:
    """The configured single sign-on provider (settings), if any: {"id", "name"}."""
    apps = settings.SOCIALACCOUNT_PROVIDERS.get("openid_connect", {}).get("APPS", [])
    if not apps:
        return None
    return {"id": apps[0]["provider_id"], "name": apps[0]["name"]}


def _safe_next(request) -> str:
    next_url = request.POST.get("next") or request.GET.get("next") or reverse("inbox")
    if not url_has_allowed_host_and_scheme(
        next_url, {request.get_host()}, require_https=request.is_secure()
    ):
        return reverse("inbox")
    return next_url


class SignInView(LoginView):
    """allauth's sign-in (the password, then the second factor when the person has one), on
    Custody's page, offering single sign-on when it is configured."""

    template_name = "registration/login.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form = context.get("form")
        refusals = form.errors.as_data().get("__all__", []) if form is not None else []
        context["mismatch"] = any(e.code == "username_password_mismatch" for e in refusals)
        return {**context, "sso": sso_provider()}


@login_required
@require_http_methods(["GET", "POST"])
def step_up(request):
    """Confirm it's you before a critical approval, then record that approval.

    A person with a second factor confirms with it (an authenticator code or a passkey), never
    with the password alone; a person without one confirms with their password, or, when
    CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR is on, is told to set one up."""
    person = request.user
    next_url = _safe_next(request)
    pending = request.session.get(PENDING_DECISION_KEY)
    waiting = None
    if pending:
        waiting = (
            selectors.requests_visible_to(person)
            .select_related("agent", "privilege")
            .filter(pk=pending.get("request_id"))
            .first()
        )
    factors = auth.second_factors(person)
    must_use_factor = settings.CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR
    code_form = ReauthenticateForm(user=person) if "totp" in factors else None
    passkey_form = PasskeyReauthenticateForm(user=person) if "webauthn" in factors else None
    error = ""
    if request.method == "POST":
        method = request.POST.get("method", "password")
        confirmed = None  # None: not confirmed; else whether a second factor confirmed it
        if method == "code" and code_form is not None:
            code_form = ReauthenticateForm(user=person, data=request.POST)
            if code_form.is_valid():
                code_form.save()
                confirmed = True
            else:
                error = "That code is not right, or it was already used. Try the next one."
        elif method == "passkey" and passkey_form is not None:
            passkey_form = PasskeyReauthenticateForm(user=person, data=request.POST)
            if passkey_form.is_valid():
                passkey_form.save()
                confirmed = True
            else:
                error = "Your passkey was not accepted. Try again."
        elif (
            method == "password"
            and not factors
            and not must_use_factor
            and person.has_usable_password()
        ):
            user = authenticate(
                request, username=person.get_username(), password=request.POST.get("password", "")
            )
            if user is not None and user.pk == person.pk:
                auth.forget_failures(user.get_username())
                confirmed = False
            else:
                error = "That password is not right."
        elif factors:
            error = "Confirm with your second factor."
        elif must_use_factor:
            error = "Set up a second factor first: critical approvals need one."
        else:
            error = "Confirming with a password is not possible for your account."
        if confirmed is not None:
            mark_fresh_login(request, second_factor=confirmed)
            request.session.pop(PENDING_DECISION_KEY, None)
            if waiting is None:
                messages.success(
                    request,
                    "Confirmed. You can approve critical requests for the next ten minutes.",
                )
                return redirect(next_url)
            # A refusal is told in the message; the request page shows where it stands.
            with contextlib.suppress(DomainError):
                _decide(request, waiting, pending["verdict"], pending.get("comment", ""))
            return redirect("request", request_id=waiting.pk)
    context = {
        "next": next_url,
        "error": error,
        "waiting": waiting,
        "pending": pending,
        "factors": factors,
        "code_form": code_form,
        "passkey_form": passkey_form,
        "must_use_factor": must_use_factor and not factors,
        "password_ok": not factors and not must_use_factor and person.has_usable_password(),
        "sso": sso_provider(),
    }
    if passkey_form is not None:
        context["js_data"] = {"request_options": webauthn.begin_authentication(person)}
    return render(request, "frontend/step_up.html", context, status=400 if error else 200)


@login_required
def security(request):
    """How this person signs in: second factors, single sign-on, password."""
    person = request.user
    provider = sso_provider()
    linked = (
        SocialAccount.objects.filter(user=person, provider=provider["id"]).exists()
        if provider
        else False
    )
    return render(
        request,
        "frontend/security.html",
        {
            "factors": auth.second_factors(person),
            "sso": provider,
            "sso_linked": linked,
            "has_password": person.has_usable_password(),
            "requires_factor": settings.CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR,
        },
    )
