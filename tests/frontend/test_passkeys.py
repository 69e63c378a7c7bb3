"""Passkeys (WebAuthn) in Chromium with a virtual authenticator (Chrome DevTools Protocol):
a person adds one from their Security page, and the step-up before a critical approval asks for
it; allauth's scripts run under Custody's CSP (no inline script), which the browser would
report as a violation otherwise."""

import re
from datetime import timedelta
from importlib import import_module

import pytest
from allauth.mfa.models import Authenticator
from django.conf import settings as django_settings
from django.utils import timezone
from playwright.sync_api import expect

from audit.models import AuditEvent
from core.sessions import SECOND_FACTOR_KEY, SESSION_KEY
from tests.frontend.conftest import PASSWORD
from tests.frontend.test_browser import browser, open_page, screenshot  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

BAD_CREDENTIALS = [
    "not json",
    "[]",
    "{}",
    '"text"',
    '{"id": 1}',
    '{"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": {}}',
    '{"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": '
    '{"clientDataJSON": "e30", "authenticatorData": "AAAA", "signature": "AAAA"}}',
    '{"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": '
    '{"clientDataJSON": [], "authenticatorData": null, "signature": 5}}',
]


def virtual_authenticator(page):
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    return cdp


def csp_violations(page) -> list[str]:
    seen: list[str] = []
    page.on(
        "console",
        lambda message: (
            seen.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return seen


def session_of(page):
    cookie = next(c for c in page.context.cookies() if c["name"] == "sessionid")
    return import_module(django_settings.SESSION_ENGINE).SessionStore(cookie["value"])


def test_a_passkey_is_added_then_confirms_a_critical_approval(
    open_page,  # noqa: F811 (the fixture imported above)
    settings,
    sponsor,
    pending,
    privileges,
):
    settings.MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = True  # the live server speaks http://localhost
    settings.CUSTODY_CRITICAL_APPROVAL_REQUIRES_SECOND_FACTOR = True
    page = open_page("sponsor", next_path="/account/security/")
    violations = csp_violations(page)
    virtual_authenticator(page)

    page.get_by_role("link", name="Add a passkey").click()
    # Adding a factor asks for the password again first.
    expect(page).to_have_url(re.compile(r"/accounts/reauthenticate/"))
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(re.compile(r"/accounts/2fa/webauthn/add/"))
    page.get_by_label("Name").fill("Laptop")
    page.get_by_role("button", name="Add").click()

    expect(page).not_to_have_url(re.compile(r"/accounts/2fa/webauthn/add/"))
    passkey = Authenticator.objects.get(user=sponsor, type=Authenticator.Type.WEBAUTHN)
    assert passkey.wrap().name == "Laptop"
    assert AuditEvent.objects.filter(verb="person.factor_added", data__factor="webauthn").exists()

    # Whatever arrives as a passkey answer, a bad one is a 400 with a sentence, never a 500.
    for credential in BAD_CREDENTIALS:
        page.goto("/step-up/")
        token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
        answer = page.request.post(
            "/step-up/",
            form={"method": "passkey", "credential": credential},
            headers={"X-CSRFToken": token},
        )
        assert answer.status == 400, (credential, answer.status)
        assert "Your passkey was not accepted." in answer.text()

    # Eleven minutes later, a critical approval: the step-up asks for the passkey.
    access_request = pending("prod-cluster:admin", task_id="rotate-certs", duration_seconds=900)
    session = session_of(page)
    session[SESSION_KEY] = (timezone.now() - timedelta(minutes=11)).isoformat()
    session.pop(SECOND_FACTOR_KEY, None)
    session.save()
    page.goto("/inbox/")
    row = page.locator(f"#request-{access_request.pk}")
    row.get_by_label(re.compile("^Comment")).fill("chg-7: rotate the certificates")
    row.get_by_role("button", name="Approve").click()
    expect(page).to_have_url(re.compile(rf"/step-up/\?next=/requests/{access_request.pk}/$"))
    expect(page.get_by_label(re.compile("Password"))).to_have_count(0)
    screenshot(page, "step-up-passkey", full_page=False)
    assert not access_request.decisions.exists()

    page.get_by_role("button", name="Confirm with your passkey").click()

    expect(page).to_have_url(re.compile(rf"^[^?]*/requests/{access_request.pk}/$"))
    expect(page.locator("#messages")).to_contain_text("Recorded: 1 of 2")
    assert access_request.decisions.filter(approver=sponsor, verdict="approve").exists()
    assert SECOND_FACTOR_KEY in session_of(page).load()
    assert violations == []

    # Signing in again: after the password, the passkey.
    page.get_by_role("button", name="Log out").click()
    page.goto("/inbox/")
    page.get_by_label("Username").fill("sponsor")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/accounts/2fa/authenticate/$"))
    screenshot(page, "sign-in-second-factor", full_page=False)
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    for credential in BAD_CREDENTIALS[4:]:
        answer = page.request.post(
            "/accounts/2fa/authenticate/",
            form={"credential": credential},
            headers={"X-CSRFToken": token},
        )
        assert answer.status < 500, (credential, answer.status)
    page.reload()
    page.get_by_role("button", name="Use a security key").click()
    expect(page).to_have_url(re.compile(r"^[^?]*/inbox/$"))
    assert SECOND_FACTOR_KEY in session_of(page).load()
    assert violations == []
