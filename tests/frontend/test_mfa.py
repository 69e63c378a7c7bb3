"""A second factor: an authenticator app (TOTP, codes computed here per RFC 6238), asked at sign-in
and at the step-up before a critical approval; a setting can require one for critical approvals.
(Passkeys, in Chromium with a virtual authenticator: tests/frontend/test_passkeys.py.)"""

import base64
import hashlib
import hmac
import re
import struct
import time
from datetime import timedelta

import pytest
import time_machine
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.test import Client
from django.utils import timezone

from approvals.models import AccessRequest
from audit.models import AuditEvent
from core.sessions import SECOND_FACTOR_KEY, SESSION_KEY

PASSWORD = "correct horse battery staple"  # UserFactory's
pytestmark = pytest.mark.django_db


def totp_code(secret: str, at: float | None = None) -> str:
    """RFC 6238: HMAC-SHA1 over the 30-second step, dynamically truncated to six digits."""
    key = base64.b32decode(secret, casefold=True)
    step = int((time.time() if at is None else at) // 30)
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


def password_sign_in(username: str) -> Client:
    client = Client()
    client.post("/login/", {"username": username, "password": PASSWORD})
    return client


def with_totp(user) -> str:
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    return secret


def next_step():
    """A code is good once: move the clock to the next 30-second step before using another."""
    return time_machine.travel(timezone.now() + timedelta(seconds=31), tick=True)


def stale(client, minutes=11):
    session = client.session
    session[SESSION_KEY] = (timezone.now() - timedelta(minutes=minutes)).isoformat()
    session.pop(SECOND_FACTOR_KEY, None)
    session.save()


def test_a_person_sets_up_an_authenticator_app_from_their_security_page(sponsor):
    client = password_sign_in("sponsor")
    security = client.get("/account/security/").content.decode()
    # Reached from the person's settings (their name in the header).
    assert 'href="/profile/"' in client.get("/").content.decode()
    assert 'href="/account/security/"' in client.get("/profile/").content.decode()
    assert "You have no second factor yet." in security
    assert 'href="/accounts/2fa/totp/activate/"' in security

    # Adding a factor asks for the password again first.
    asked = client.get("/accounts/2fa/totp/activate/")
    assert asked["Location"].startswith("/accounts/reauthenticate/")
    client.post(asked["Location"], {"password": PASSWORD})
    page = client.get("/accounts/2fa/totp/activate/")
    assert page.status_code == 200
    secret = re.search(r'value="([A-Z2-7]{32})"', page.content.decode()).group(1)
    wrong = client.post("/accounts/2fa/totp/activate/", {"code": "000000"})
    assert wrong.status_code == 200 and not Authenticator.objects.exists()

    done = client.post("/accounts/2fa/totp/activate/", {"code": totp_code(secret)})

    assert done.status_code == 302
    assert Authenticator.objects.filter(user=sponsor, type="totp").exists()
    event = AuditEvent.objects.filter(verb="person.factor_added").first()
    assert (event.actor_id, event.data["factor"]) == ("sponsor", "totp")
    assert "Authenticator app: on." in client.get("/account/security/").content.decode()


def test_signing_in_then_asks_for_the_code(sponsor):
    secret = with_totp(sponsor)
    client = Client()

    asked = client.post("/login/", {"username": "sponsor", "password": PASSWORD})

    assert asked.status_code == 302
    assert asked["Location"] == "/accounts/2fa/authenticate/"
    assert not signed_in(client)
    assert client.get("/inbox/").status_code == 302  # still not in
    client.post("/accounts/2fa/authenticate/", {"code": "123456"})
    assert not signed_in(client)

    done = client.post("/accounts/2fa/authenticate/", {"code": totp_code(secret)})

    assert done.status_code == 302
    assert signed_in(client)
    assert SECOND_FACTOR_KEY in client.session


def test_the_admin_too_signs_in_with_the_code(admin_user):
    with_totp(admin_user)
    client = Client()

    client.post("/login/?next=/admin/", {"username": "admin", "password": PASSWORD})

    assert not signed_in(client)
    assert client.get("/admin/").status_code == 302


def test_the_step_up_asks_for_the_code_not_the_password(web, sponsor, pending):
    secret = with_totp(sponsor)
    access_request = pending("prod-cluster:admin")
    client = web(sponsor)
    stale(client)

    asked = client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve", "comment": "chg-7"}
    )
    assert asked["Location"] == f"/step-up/?next=/requests/{access_request.pk}/"
    page = client.get(asked["Location"]).content.decode()
    assert 'name="code"' in page
    assert 'name="password"' not in page

    password = client.post("/step-up/", {"password": PASSWORD})
    assert password.status_code == 400
    wrong = client.post("/step-up/", {"method": "code", "code": "000000"})
    assert wrong.status_code == 400
    assert "That code is not right" in wrong.content.decode()
    assert not access_request.decisions.exists()
    failed = AuditEvent.objects.get(verb="login.failed")
    assert (failed.data["form"], failed.data["factor"], failed.data["step_up"]) == (
        "second-factor",
        "totp",
        True,
    )

    right = client.post("/step-up/", {"method": "code", "code": totp_code(secret)})

    assert right["Location"] == f"/requests/{access_request.pk}/"
    decision = access_request.decisions.get()
    assert (decision.approver, decision.verdict, decision.comment) == (sponsor, "approve", "chg-7")
    assert SECOND_FACTOR_KEY in client.session


def test_a_setting_requires_a_second_factor_and_says_how_to_get_one(
    web, sponsor, pending, settings
):
    settings.CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR = True
    access_request = pending("prod-cluster:admin")
    client = web(sponsor)  # a fresh sign-in, with the password only

    asked = client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve", "comment": "chg-7"}
    )

    assert asked["Location"].startswith("/step-up/")
    page = client.get(asked["Location"]).content.decode()
    assert "Approving critical requests needs a second factor, and you have not set one" in page
    assert 'href="/account/security/"' in page
    assert 'name="password"' not in page
    assert client.post("/step-up/", {"password": PASSWORD}).status_code == 400
    assert not access_request.decisions.exists()
    # Below critical, nothing changes.
    medium = pending()
    client.post(f"/requests/{medium.pk}/decide/", {"verdict": "approve"})
    medium.refresh_from_db()
    assert medium.status == AccessRequest.Status.APPROVED


def test_with_the_setting_a_password_sign_in_is_not_enough_but_the_code_is(
    web, sponsor, pending, settings
):
    settings.CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR = True
    secret = with_totp(sponsor)
    access_request = pending("prod-cluster:admin")
    client = web(sponsor)  # fresh, but no second factor in this session

    asked = client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve", "comment": "chg-7"}
    )
    assert asked["Location"].startswith("/step-up/")
    assert not access_request.decisions.exists()
    refusal = AuditEvent.objects.get(verb="decision.refused")
    assert refusal.data["why"] == "second_factor_required"

    client.post("/step-up/", {"method": "code", "code": totp_code(secret)})

    assert access_request.decisions.filter(approver=sponsor, verdict="approve").exists()


def test_a_code_is_good_once(web, sponsor, pending):
    secret = with_totp(sponsor)
    client = web(sponsor)
    code = totp_code(secret)
    assert client.post("/step-up/", {"method": "code", "code": code}).status_code == 302

    replayed = client.post("/step-up/", {"method": "code", "code": code})

    assert replayed.status_code == 400
    with next_step():
        assert (
            client.post("/step-up/", {"method": "code", "code": totp_code(secret)}).status_code
            == 302
        )


def test_the_decisions_api_holds_the_same_rule(sponsor, pending, settings):
    from rest_framework.test import APIClient

    settings.CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR = True
    secret = with_totp(sponsor)
    access_request = pending("prod-cluster:admin")
    client = APIClient()
    client.force_login(sponsor)
    url = f"/api/v1/requests/{access_request.pk}/decisions"

    refused = client.post(url, {"verdict": "approve", "comment": "chg-7"}, format="json")

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "second_factor_required"
    assert "second factor" in refused.json()["error"]["message"]
    client.post("/step-up/", {"method": "code", "code": totp_code(secret)})
    assert (
        client.post(url, {"verdict": "approve", "comment": "chg-7"}, format="json").status_code
        == 201
    )


@pytest.mark.parametrize("code", ["", "abc", "1" * 5000, "12345\x00", "١٢٣٤٥٦"])
def test_a_malformed_code_is_a_wrong_code(web, sponsor, code):
    with_totp(sponsor)
    client = web(sponsor)

    answer = client.post("/step-up/", {"method": "code", "code": code})

    assert answer.status_code == 400
    assert "That code is not right" in answer.content.decode()


def test_someone_with_only_sso_adds_a_factor_right_after_signing_in(web, sponsor):
    sponsor.set_unusable_password()
    sponsor.save()
    client = web(sponsor)
    session = client.session
    session[SESSION_KEY] = timezone.now().isoformat()  # signed in through SSO just now
    session.save()

    assert client.get("/accounts/2fa/totp/activate/").status_code == 200

    stale(client, minutes=10)
    later = client.get("/accounts/2fa/totp/activate/")
    assert later.status_code == 403
    assert "sign in again through single sign-on" in later.content.decode()
