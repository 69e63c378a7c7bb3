"""Single sign-on over OpenID Connect, against a provider the test starts (tests/oidc_provider.py):
the login goes through allauth's real callback, which fetches the token and userinfo over HTTP.

Who a login is: an explicit link, else a verified email naming one active non-staff person;
anyone else is refused, or, with CUSTODY_SSO_AUTO_SIGNUP, created with no rights."""

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from allauth.socialaccount.models import SocialAccount
from django.contrib.auth import get_user_model
from django.test import Client

from audit.models import AuditEvent
from core.sessions import SESSION_KEY
from tests.factories import UserFactory
from tests.oidc_provider import OpenIDProvider

pytestmark = pytest.mark.django_db


@pytest.fixture
def provider(settings):
    with OpenIDProvider() as running:
        settings.SOCIALACCOUNT_PROVIDERS = {
            "openid_connect": {
                "APPS": [
                    {
                        "provider_id": "sso",
                        "name": "Acme SSO",
                        "client_id": running.client_id,
                        "secret": running.client_secret,
                        "settings": {
                            "server_url": running.issuer,
                            "oauth_pkce_enabled": True,
                            "auth_params": {"prompt": "login"},
                        },
                    }
                ]
            }
        }
        yield running


def sso_login(provider, client, *, next_url="/inbox/"):
    """What a browser does: Custody's button, the provider's redirect, Custody's callback."""
    start = client.post("/accounts/oidc/sso/login/", {"process": "login", "next": next_url})
    assert start.status_code == 302, start.content
    assert start["Location"].startswith(f"{provider.issuer}/authorize?")
    at_provider = requests.get(start["Location"], allow_redirects=False, timeout=5)
    assert at_provider.status_code == 302
    back = urlsplit(at_provider.headers["Location"])
    return client.get(back.path, parse_qs(back.query))


def person(sub="00u-alice", email="alice@example.com", verified=True, **claims):
    return {"sub": sub, "email": email, "email_verified": verified, **claims}


def signed_in_as(client):
    user_id = client.session.get("_auth_user_id")
    return get_user_model().objects.get(pk=user_id) if user_id else None


def test_the_sign_in_page_offers_single_sign_on(provider):
    page = Client().get("/login/?next=/inbox/")

    assert page.status_code == 200
    assert "Sign in with Acme SSO" in page.content.decode()
    assert 'action="/accounts/oidc/sso/login/"' in page.content.decode()


def test_a_known_person_signs_in_by_verified_email_and_is_linked(provider):
    alice = UserFactory(username="alice", email="Alice@Example.com")
    provider.person = person()
    client = Client()

    done = sso_login(provider, client)

    assert done.status_code == 302
    assert done["Location"] == "/inbox/"
    assert signed_in_as(client) == alice
    assert SESSION_KEY in client.session  # a fresh sign-in, for step-up decisions
    link = SocialAccount.objects.get(user=alice)
    assert link.uid == "00u-alice"
    event = AuditEvent.objects.get(verb="person.sso_linked")
    assert (event.actor_id, event.data["how"], event.data["subject"]) == (
        "alice",
        "verified_email",
        "00u-alice",
    )
    # The code went through PKCE and the provider was asked for a sign-in of its own.
    assert provider.authorize_requests[0]["prompt"] == "login"
    assert provider.authorize_requests[0]["code_challenge_method"] == "S256"
    assert provider.token_requests[0]["code_verifier"]

    # Next time the link decides, whatever the email has become at the provider.
    provider.person = person(email="alice.renamed@example.com")
    again = Client()
    assert sso_login(provider, again).status_code == 302
    assert signed_in_as(again) == alice
    assert AuditEvent.objects.filter(verb="person.sso_linked").count() == 1


def test_someone_unknown_is_refused_with_a_sentence_and_nothing_is_created(provider):
    provider.person = person(sub="00u-eve", email="eve@example.com")
    client = Client()
    people_before = get_user_model().objects.count()

    refused = sso_login(provider, client)

    assert refused.status_code == 403
    assert "There is no Custody account for eve@example.com" in refused.content.decode()
    assert signed_in_as(client) is None
    assert get_user_model().objects.count() == people_before
    assert not SocialAccount.objects.exists()


def test_an_unverified_email_matches_nobody(provider):
    UserFactory(username="alice", email="alice@example.com")
    provider.person = person(verified=False)
    client = Client()

    refused = sso_login(provider, client)

    assert refused.status_code == 403
    assert "did not confirm your email address" in refused.content.decode()
    assert signed_in_as(client) is None


def test_an_admin_is_never_matched_by_email(provider, admin_user):
    provider.person = person(sub="00u-admin", email=admin_user.email)
    client = Client()

    refused = sso_login(provider, client)

    assert refused.status_code == 403
    assert "Admin accounts are never matched by email" in refused.content.decode()
    assert signed_in_as(client) is None
    assert not SocialAccount.objects.exists()


def test_an_inactive_person_does_not_get_in(provider):
    UserFactory(username="alice", email="alice@example.com", is_active=False)
    provider.person = person()
    client = Client()

    sso_login(provider, client)

    assert signed_in_as(client) is None


def test_auto_signup_creates_a_person_with_no_rights_who_approves_nothing(
    provider, settings, sponsor, agent, privileges, admin_user
):
    from tests.factories import AccessRequestFactory

    settings.CUSTODY_SSO_AUTO_SIGNUP = True
    provider.person = person(
        sub="00u-newbie", email="newbie@example.com", preferred_username="admin"
    )
    access_request = AccessRequestFactory(agent=agent, privilege_name="payments-api:refund")
    client = Client()

    done = sso_login(provider, client)

    assert done.status_code == 302
    newbie = signed_in_as(client)
    assert newbie is not None and newbie.email == "newbie@example.com"
    assert newbie.username != "admin"  # the provider's name for them never takes another's
    assert not (newbie.is_staff or newbie.is_superuser)
    assert not newbie.has_usable_password()
    assert not newbie.groups.exists() and not newbie.user_permissions.exists()
    assert AuditEvent.objects.get(verb="person.created").data["subject"] == "00u-newbie"
    # Nothing to see, nothing to decide.
    assert client.get(f"/requests/{access_request.pk}/").status_code == 404
    decided = client.post(f"/requests/{access_request.pk}/decide/", {"verdict": "approve"})
    assert decided.status_code == 404
    assert not access_request.decisions.exists()


def test_a_signed_in_person_links_single_sign_on_explicitly(provider, admin_user):
    client = Client()
    client.force_login(admin_user)
    provider.person = person(sub="00u-root", email="someone-else@example.com")

    page = client.get("/account/security/")
    assert "Link Acme SSO" in page.content.decode()
    start = client.post("/accounts/oidc/sso/login/", {"process": "connect", "next": "/"})
    at_provider = requests.get(start["Location"], allow_redirects=False, timeout=5)
    back = urlsplit(at_provider.headers["Location"])
    client.get(back.path, parse_qs(back.query))

    assert SocialAccount.objects.get(uid="00u-root").user == admin_user
    assert AuditEvent.objects.get(verb="person.sso_linked").data["how"] == "explicit"
    # From then on the admin signs in through the provider.
    again = Client()
    sso_login(provider, again)
    assert signed_in_as(again) == admin_user


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"code": "made-up", "state": "made-up"},
        {"error": "access_denied", "state": "x"},
        {"code": "x" * 5000},
    ],
)
def test_a_callback_nobody_started_signs_nobody_in(provider, query):
    client = Client(raise_request_exception=False)

    answer = client.get("/accounts/oidc/sso/login/callback/", query)

    assert 400 <= answer.status_code < 500
    assert signed_in_as(client) is None


def test_a_code_from_the_provider_cannot_be_replayed(provider):
    UserFactory(username="alice", email="alice@example.com")
    provider.person = person()
    client = Client()
    start = client.post("/accounts/oidc/sso/login/", {"process": "login", "next": "/"})
    back = urlsplit(
        requests.get(start["Location"], allow_redirects=False, timeout=5).headers["Location"]
    )
    assert client.get(back.path, parse_qs(back.query)).status_code == 302

    thief = Client(raise_request_exception=False)
    replayed = thief.get(back.path, parse_qs(back.query))

    assert 400 <= replayed.status_code < 500
    assert signed_in_as(thief) is None


def test_an_identity_linked_to_someone_else_is_not_moved(provider, admin_user):
    alice = UserFactory(username="alice", email="alice@example.com")
    provider.person = person()
    sso_login(provider, Client())
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)

    start = client.post("/accounts/oidc/sso/login/", {"process": "connect", "next": "/"})
    back = urlsplit(
        requests.get(start["Location"], allow_redirects=False, timeout=5).headers["Location"]
    )
    answer = client.get(back.path, parse_qs(back.query))

    assert answer.status_code < 500
    assert SocialAccount.objects.get(uid="00u-alice").user == alice
    assert AuditEvent.objects.filter(verb="person.sso_linked").count() == 1


def test_an_sso_only_person_steps_up_by_signing_in_through_sso_again(provider, sponsor, pending):
    from datetime import timedelta

    from django.utils import timezone

    sponsor.set_unusable_password()
    sponsor.save()
    provider.person = person(sub="00u-sponsor", email=sponsor.email)
    access_request = pending("prod-cluster:admin")
    client = Client()
    sso_login(provider, client)
    session = client.session
    session[SESSION_KEY] = (timezone.now() - timedelta(minutes=11)).isoformat()
    session.save()

    asked = client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve", "comment": "chg-7"}
    )
    page = client.get(asked["Location"]).content.decode()

    assert 'name="password"' not in page
    assert "Sign in again with Acme SSO" in page
    assert client.post("/step-up/", {"password": "anything"}).status_code == 400
    sso_login(provider, client, next_url=f"/requests/{access_request.pk}/")
    assert signed_in_as(client) == sponsor
    client.post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve", "comment": "chg-7"}
    )
    assert access_request.decisions.filter(approver=sponsor, verdict="approve").exists()
