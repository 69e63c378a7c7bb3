"""People's sign-ins: a sign-in marks the session fresh (core/sessions.py, for step-up
decisions; a sign-in that passed the second factor marks that too), the evidence of second
factors added and removed, and the evidence and lockout page of password guessing, which
django-axes throttles (see settings)."""

import time

from allauth.account.authentication import get_authentication_records
from allauth.mfa import signals as mfa_signals
from allauth.mfa.models import Authenticator
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.shortcuts import render

from audit.services import Actor, record, record_throttled
from core.client_ip import client_ip
from core.sessions import mark_fresh_login

SECOND_FACTORS = (Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN)


def second_factors(user) -> set[str]:
    """The kinds of second factor a person has set up: "totp", "webauthn" (recovery codes are
    a way back in, not a factor of their own)."""
    return set(
        Authenticator.objects.filter(user_id=user.pk, type__in=SECOND_FACTORS).values_list(
            "type", flat=True
        )
    )


def _passed_second_factor(request, user) -> bool:
    # allauth notes each step of the sign-in in the session; its second-factor stage runs
    # just before the login itself, so a step older than a few minutes is not this sign-in's.
    recent = time.time() - 300
    return any(
        step.get("method") == "mfa" and step.get("at", 0) >= recent
        for step in get_authentication_records(request, user)
    )


@receiver(user_logged_in)
def remember_login_time(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        mark_fresh_login(request, second_factor=_passed_second_factor(request, user))
    forget_failures(user.get_username())


# On the model rather than allauth's signals, which are sent after the commit: the evidence of
# a second factor added or removed is written in the transaction that adds or removes it.
@receiver(post_save, sender=Authenticator)
def audit_factor_added(sender, instance, created, **kwargs):
    if created:
        _audit_factor("person.factor_added", instance)


@receiver(post_delete, sender=Authenticator)
def audit_factor_removed(sender, instance, **kwargs):
    _audit_factor("person.factor_removed", instance)


def _audit_factor(verb: str, authenticator) -> None:
    person = authenticator.user
    record(
        actor=Actor.for_user(person),
        verb=verb,
        data={"person": person.get_username(), "factor": authenticator.type},
    )


def forget_failures(username: str) -> None:
    """The right password clears that account's failed attempts; its address's count stays."""
    AccessAttempt.objects.filter(username=username).delete()


def _sign_in_form(request) -> str:
    path = request.path
    if path.startswith("/admin/"):
        return "admin"
    return "step-up" if path.rstrip("/").endswith("step-up") else "login"


@receiver(user_login_failed)
def audit_failed_sign_in(sender, credentials, request=None, **kwargs):
    # Django hands over the credentials with the password already masked; only the name is kept.
    address = (client_ip(request) if request is not None else None) or "unknown"
    record_throttled(
        bucket="login:failed",
        per_minute=settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE,
        actor=Actor.anonymous(address),
        verb="login.failed",
        data={
            "username": str(credentials.get("username", ""))[:150],
            "client_ip": address,
            "form": _sign_in_form(request) if request is not None else None,
            "locked_out": bool(getattr(request, "axes_locked_out", False)),
        },
    )


@receiver(user_locked_out)
def audit_lockout(sender, request, username, ip_address, **kwargs):
    record_throttled(
        bucket="login:locked_out",
        per_minute=settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE,
        actor=Actor.anonymous(ip_address or "unknown"),
        verb="login.locked_out",
        data={
            "username": str(username or "")[:150],
            "client_ip": ip_address,
            "form": _sign_in_form(request),
            "failure_limit": settings.AXES_FAILURE_LIMIT,
            "cool_off_minutes": int(settings.AXES_COOLOFF_TIME.total_seconds() // 60),
        },
    )


@receiver(mfa_signals.authentication_failed)
def audit_failed_second_factor(sender, request, user, authenticator, reauthentication, **kwargs):
    # A wrong authenticator code or passkey, at sign-in or step-up; allauth's rate limit
    # (ACCOUNT_RATE_LIMITS "login_failed") bounds the guesses, this keeps the evidence.
    address = (client_ip(request) if request is not None else None) or "unknown"
    record_throttled(
        bucket="login:failed",
        per_minute=settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE,
        actor=Actor.anonymous(address),
        verb="login.failed",
        data={
            "username": user.get_username(),
            "client_ip": address,
            "form": "second-factor",
            "factor": authenticator.type,
            "step_up": bool(reauthentication),
        },
    )


def lockout_response(request, original_response=None, credentials=None):
    """One answer whether or not the account exists, and whichever limit was reached."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return render(request, "registration/locked_out.html", {"minutes": minutes}, status=429)
