"""First single sign-ons of one person arriving at once (two windows, a double click): real
threads through allauth's real callback. Each caller gets an answer, never a 500; one link or
one new person results, with its evidence once, and the chain verifies. The link serializes on
the person's row (frontend/sso.py); on SQLite, writers serialize anyway."""

import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from allauth.socialaccount.models import SocialAccount
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from audit.models import AuditEvent
from audit.services import verify_chain
from tests.factories import UserFactory
from tests.frontend.test_sso import person, provider  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db(transaction=True)

CALLERS = 4


def race(provider, callers: int = CALLERS) -> tuple[Counter, list[str | None]]:  # noqa: F811
    """Every caller goes to the provider first; then all callbacks are sent at once."""
    prepared = []
    for _ in range(callers):
        client = Client(raise_request_exception=False)
        start = client.post("/accounts/oidc/sso/login/", {"process": "login", "next": "/"})
        at_provider = requests.get(start["Location"], allow_redirects=False, timeout=5)
        prepared.append((client, urlsplit(at_provider.headers["Location"])))
    statuses: Counter = Counter()
    signed_in: list[str | None] = []
    lock = threading.Lock()
    barrier = threading.Barrier(callers)

    def call(client, back):
        try:
            barrier.wait(timeout=10)
            answer = client.get(back.path, parse_qs(back.query))
            with lock:
                statuses[answer.status_code] += 1
                signed_in.append(client.session.get("_auth_user_id"))
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=pair) for pair in prepared]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return statuses, signed_in


def test_concurrent_first_sign_ins_link_the_person_once(provider):  # noqa: F811
    alice = UserFactory(username="alice", email="alice@example.com")
    provider.person = person()

    statuses, signed_in = race(provider)

    assert statuses == Counter({302: CALLERS})
    assert signed_in == [str(alice.pk)] * CALLERS
    assert SocialAccount.objects.filter(uid="00u-alice").count() == 1
    assert AuditEvent.objects.filter(verb="person.sso_linked").count() == 1
    assert verify_chain().first_bad_sequence is None


def test_concurrent_auto_signups_create_one_person(provider, settings):  # noqa: F811
    settings.CUSTODY_SSO_AUTO_SIGNUP = True
    provider.person = person(sub="00u-new", email="new@example.com")
    people_before = get_user_model().objects.count()

    statuses, signed_in = race(provider)

    assert not any(status >= 500 for status in statuses), statuses
    assert set(statuses) <= {302, 409}
    assert statuses[302] >= 1
    assert get_user_model().objects.count() == people_before + 1
    assert SocialAccount.objects.filter(uid="00u-new").count() == 1
    assert AuditEvent.objects.filter(verb="person.created").count() == 1
    newcomer = SocialAccount.objects.get(uid="00u-new").user_id
    assert {user for user in signed_in if user} == {str(newcomer)}
    assert verify_chain().first_bad_sequence is None
