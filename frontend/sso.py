"""Who a single sign-on login is, in Custody (django-allauth's adapters).

The rule a security team expects (README, "Sign-in"):
- an SSO identity explicitly linked to a person (from their Security page, while signed in) signs
  in as that person;
- otherwise the provider's *verified* email must name exactly one active person, who is then
  linked (evidence: `person.sso_linked`); staff and superusers are never linked by email — an
  admin links explicitly, so a mistake at the provider cannot hand anyone the admin;
- anyone else is refused with a sentence, unless CUSTODY_SSO_AUTO_SIGNUP is on: then a person is
  created with no rights at all (not staff, no groups, no permissions, no password), which means
  they approve nothing until an admin makes them a sponsor or backup approver
  (evidence: `person.created`).
Nobody signs up with a password; the local password sign-in stays for people who have one.
"""

from __future__ import annotations

from datetime import timedelta

from allauth.account import app_settings as account_settings
from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.forms import LoginForm as AllauthLoginForm
from allauth.account.internal.flows.reauthentication import get_reauthentication_flows
from allauth.core import context
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.models import SocialAccount, SocialLogin
from allauth.socialaccount.signals import social_account_removed
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.dispatch import receiver
from django.shortcuts import render
from django.utils import timezone

from audit.services import Actor, record
from core.client_ip import client_ip
from core.sessions import authenticated_at


class LoginForm(AllauthLoginForm):
    """allauth's sign-in form, reading the field the sign-in page has always had: `username`."""

    def __init__(self, *args, **kwargs):
        data = kwargs.get("data")
        if data is not None and "login" not in data and "username" in data:
            data = data.copy()
            data["login"] = data["username"]
            kwargs["data"] = data
        super().__init__(*args, **kwargs)


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request) -> bool:
        return False  # accounts come from admins (or SSO, see SocialAccountAdapter)

    def is_reauthentication_required(self, *, app: str, **kwargs) -> bool:
        """Adding or removing a second factor asks for a password or a factor again. Someone who
        has neither (they sign in through SSO only) cannot be asked: a sign-in within the last
        few minutes stands for it instead."""
        if not super().is_reauthentication_required(app=app, **kwargs):
            return False
        request = context.request
        if request is None or get_reauthentication_flows(request.user):
            return True
        signed_in_at = authenticated_at(request)
        window = timedelta(seconds=account_settings.REAUTHENTICATION_TIMEOUT)
        if signed_in_at is None or timezone.now() - signed_in_at > window:
            minutes = window.seconds // 60
            _refuse(
                request,
                "To change how you sign in, sign out and sign in again through single sign-on, "
                f"then make the change within {minutes} minutes.",
                title="Sign in again first",
            )
        return False

    def get_client_ip(self, request) -> str:
        # The one notion of the client's address (TRUSTED_PROXIES), as axes and the audit use.
        return client_ip(request) or "unknown"


def _refuse(request, message: str, status: int = 403, title: str = ""):
    context = {"message": message, "title": title or "Custody cannot sign you in"}
    raise ImmediateHttpResponse(
        render(request, "registration/sso_refused.html", context, status=status)
    )


def _link(request, sociallogin: SocialLogin, person, *, how: str) -> None:
    """Link this SSO identity to `person`, once: concurrent first sign-ins of the same person
    serialize on the person's row (then the identity, the audit chain head last)."""
    with transaction.atomic():
        get_user_model().objects.select_for_update().filter(pk=person.pk).first()
        account = sociallogin.account
        existing = (
            SocialAccount.objects.select_related("user")
            .filter(provider=account.provider, uid=account.uid)
            .first()
        )
        if existing is not None:  # linked by the sign-in that held the lock before us
            sociallogin.account = existing
            sociallogin.user = existing.user
            return
        # Not sociallogin.connect(), which writes the link and its evidence apart.
        sociallogin.user = person
        sociallogin.save(request, connect=True)
        record(
            actor=Actor.for_user(person),
            verb="person.sso_linked",
            data={"how": how, **_identity(sociallogin)},
        )


def _verified_email(sociallogin: SocialLogin) -> str:
    for address in sociallogin.email_addresses:
        if address.verified and address.email:
            return address.email.strip()
    return ""


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def pre_social_login(self, request, sociallogin: SocialLogin) -> None:
        if sociallogin.is_existing:
            return  # linked: an explicit link, or an earlier match by email
        if sociallogin.state.get("process") == "connect":
            if request.user.is_authenticated:  # a signed-in person linking their identity
                _link(request, sociallogin, request.user, how="explicit")
            return
        email = _verified_email(sociallogin)
        if not email:
            _refuse(
                request,
                "Your sign-in provider did not confirm your email address, so Custody cannot "
                "tell who you are. Ask your identity team, or sign in with your password and "
                "link single sign-on from your Security page.",
            )
        people = list(get_user_model().objects.filter(email__iexact=email, is_active=True)[:2])
        if len(people) > 1:
            _refuse(
                request,
                f"More than one Custody account has the email {email}; an admin must link "
                "yours explicitly.",
            )
        if people:
            person = people[0]
            if person.is_staff or person.is_superuser:
                _refuse(
                    request,
                    "Admin accounts are never matched by email. Sign in with your password "
                    "and link single sign-on from your Security page.",
                )
            _link(request, sociallogin, person, how="verified_email")
            return
        if not settings.CUSTODY_SSO_AUTO_SIGNUP:
            _refuse(
                request,
                f"There is no Custody account for {email}. Ask a Custody admin to create one.",
            )

    def is_open_for_signup(self, request, sociallogin) -> bool:
        return settings.CUSTODY_SSO_AUTO_SIGNUP

    def save_user(self, request, sociallogin, form=None):
        try:
            return self._create_person(request, sociallogin, form)
        except IntegrityError:
            # The same identity signing up in another window at the same moment won the race.
            _refuse(request, "You were being signed in twice at once. Sign in again.", status=409)

    def _create_person(self, request, sociallogin, form):
        with transaction.atomic():
            user = super().save_user(request, sociallogin, form)
            # Whatever the provider sent, a new person starts with no rights at all.
            user.is_staff = user.is_superuser = False
            user.set_unusable_password()
            user.save(update_fields=["is_staff", "is_superuser", "password"])
            record(
                actor=Actor.for_user(user),
                verb="person.created",
                data={
                    "how": "sso_auto_signup",
                    "username": user.get_username(),
                    **_identity(sociallogin),
                },
            )
        return user


def _identity(sociallogin: SocialLogin) -> dict:
    account = sociallogin.account
    return {
        "provider": account.provider,
        "subject": account.uid,
        "email": _verified_email(sociallogin),
    }


@receiver(social_account_removed)
def audit_unlink(sender, request, socialaccount, **kwargs):
    record(
        actor=Actor.for_user(socialaccount.user),
        verb="person.sso_unlinked",
        data={"provider": socialaccount.provider, "subject": socialaccount.uid},
    )
