"""Password guessing is throttled per account and per client address, and is evidence.

The sign-in page, the step-up page and the admin sign-in share one count (django-axes); the
client address comes from TRUSTED_PROXIES, never from a header anyone can send."""

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from axes.models import AccessAttempt
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from tests.factories import UserFactory

PASSWORD = "correct horse battery staple"  # UserFactory's
LIMIT = 5  # CUSTODY_PASSWORD_FAILURE_LIMIT's default
pytestmark = pytest.mark.django_db


def sign_in(username, password, *, ip="203.0.113.10", client=None, path="/login/", **headers):
    client = client or Client()
    return client.post(
        path, {"username": username, "password": password}, REMOTE_ADDR=ip, **headers
    )


def signed_in(response) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.client.session


def test_wrong_passwords_lock_an_account_with_one_answer_whether_or_not_it_exists(sponsor):
    answers = {}
    for username, ip in (("sponsor", "203.0.113.10"), ("no-such-person", "203.0.113.20")):
        statuses = [sign_in(username, "wrong", ip=ip).status_code for _ in range(LIMIT - 1)]
        locked = sign_in(username, "wrong", ip=ip)
        assert statuses == [200] * (LIMIT - 1)
        assert locked.status_code == 429
        # Byte for byte, but for the per-client CSRF token.
        answers[username] = re.sub(rb'"X-CSRFToken": "[^"]*"', b"", locked.content)
    assert answers["sponsor"] == answers["no-such-person"]
    assert b"Too many sign-in attempts" in answers["sponsor"]
    assert b"sponsor" not in answers["sponsor"]
    # The right password is refused too while locked, from any address.
    refused = sign_in("sponsor", PASSWORD, ip="198.51.100.77")
    assert refused.status_code == 429
    assert not signed_in(refused)


def test_one_address_is_locked_across_usernames(sponsor):
    for n in range(LIMIT - 1):
        assert sign_in(f"guess-{n}", "wrong", ip="203.0.113.66").status_code == 200
    assert sign_in("guess-last", "wrong", ip="203.0.113.66").status_code == 429
    assert sign_in("sponsor", PASSWORD, ip="203.0.113.66").status_code == 429
    # The account itself had no failures: from elsewhere it signs in.
    assert signed_in(sign_in("sponsor", PASSWORD, ip="198.51.100.1"))


def test_step_up_failures_count_toward_the_lockout(sponsor):
    client = Client(REMOTE_ADDR="203.0.113.10")
    client.force_login(sponsor)
    for _ in range(LIMIT - 1):
        assert client.post("/step-up/", {"password": "not it"}).status_code == 400
    locked = client.post("/step-up/", {"password": "not it"})
    assert locked.status_code == 429
    assert client.post("/step-up/", {"password": PASSWORD}).status_code == 429
    assert sign_in("sponsor", PASSWORD, ip="198.51.100.1").status_code == 429


def test_the_admin_signs_in_on_the_throttled_sign_in_page(admin_user):
    # No password form of its own: the admin's sign-in is everyone's (second factor included).
    for path in ("/admin/login/",):
        answer = Client().post(path, {"username": "admin", "password": PASSWORD})
        assert answer.status_code == 302
        assert answer["Location"].startswith("/login/?next=")
        assert "_auth_user_id" not in answer.client.session
    for _ in range(LIMIT - 1):
        assert sign_in("admin", "wrong").status_code == 200
    assert sign_in("admin", "wrong").status_code == 429
    refused = sign_in("admin", PASSWORD, ip="198.51.100.2", path="/login/?next=/admin/")
    assert refused.status_code == 429
    assert not signed_in(refused)


def test_the_lock_lifts_after_the_cool_off(sponsor, settings):
    for _ in range(LIMIT):
        sign_in("sponsor", "wrong")
    assert sign_in("sponsor", PASSWORD).status_code == 429
    later = timezone.now() + settings.AXES_COOLOFF_TIME + timedelta(seconds=1)
    with time_machine.travel(later, tick=False):
        assert signed_in(sign_in("sponsor", PASSWORD))


def test_a_sign_in_clears_its_accounts_failures_but_not_its_addresss(sponsor):
    for _ in range(LIMIT - 1):
        sign_in("sponsor", "wrong", ip="198.51.100.5")
    assert signed_in(sign_in("sponsor", PASSWORD, ip="198.51.100.6"))
    # The account starts afresh: four more typos do not lock it.
    for _ in range(LIMIT - 1):
        assert sign_in("sponsor", "wrong", ip="198.51.100.7").status_code == 200

    # An attacker's own successful sign-in does not wipe the count of its guesses elsewhere.
    UserFactory(username="mallory")
    for _ in range(LIMIT - 1):
        assert sign_in("victim", "wrong", ip="203.0.113.99").status_code == 200
    assert signed_in(sign_in("mallory", PASSWORD, ip="203.0.113.99"))
    assert sign_in("victim", "wrong", ip="203.0.113.99").status_code == 429


def test_failed_and_locked_sign_ins_are_audited_without_the_password(sponsor):
    secret = "hunter2-not-the-password"
    for _ in range(LIMIT):
        sign_in("sponsor", secret, ip="203.0.113.44")
    failed = AuditEvent.objects.filter(verb="login.failed").order_by("sequence")
    assert failed.count() == LIMIT
    assert failed[0].data == {
        "username": "sponsor",
        "client_ip": "203.0.113.44",
        "form": "login",
        "locked_out": False,
    }
    assert failed[0].actor_id == "unauthenticated:203.0.113.44"
    assert failed.last().data["locked_out"] is True
    locked = AuditEvent.objects.get(verb="login.locked_out")
    assert locked.data["username"] == "sponsor"
    assert locked.data["client_ip"] == "203.0.113.44"
    assert locked.data["failure_limit"] == LIMIT
    client = Client(REMOTE_ADDR="203.0.113.45")
    client.force_login(sponsor)
    client.post("/step-up/", {"password": secret})
    forms = [event.data["form"] for event in AuditEvent.objects.filter(verb="login.failed")]
    assert forms[-1] == "step-up"
    everything = json.dumps([event.data for event in AuditEvent.objects.all()])
    assert secret not in everything
    assert secret not in str(list(AccessAttempt.objects.values()))  # axes' own rows neither


def test_audited_sign_in_failures_are_rate_limited(db, settings):
    settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE = 3
    for n in range(8):
        sign_in(f"guess-{n}", "wrong", ip=f"203.0.113.{n + 1}")
    assert AuditEvent.objects.filter(verb="login.failed").count() == 3
    assert AuditEvent.objects.filter(verb="login.failed").last().data["budget_note"]


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(sponsor, settings):
    settings.TRUSTED_PROXIES = []
    # Rotating the header does not make one attacker many clients.
    for n in range(LIMIT - 1):
        response = sign_in(
            f"guess-{n}", "wrong", ip="198.51.100.9", HTTP_X_FORWARDED_FOR=f"10.9.9.{n}"
        )
        assert response.status_code == 200
    last = sign_in("guess-x", "wrong", ip="198.51.100.9", HTTP_X_FORWARDED_FOR="10.9.9.99")
    assert last.status_code == 429
    addresses = {
        event.data["client_ip"] for event in AuditEvent.objects.filter(verb="login.failed")
    }
    assert addresses == {"198.51.100.9"}


def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(sponsor, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    proxy = "10.0.0.2"
    for n in range(LIMIT):
        sign_in(f"guess-{n}", "wrong", ip=proxy, HTTP_X_FORWARDED_FOR="203.0.113.5")
    assert sign_in(
        "sponsor", PASSWORD, ip=proxy, HTTP_X_FORWARDED_FOR="203.0.113.5"
    ).status_code == (429)
    # Another client behind the same proxy is not locked out with the first.
    assert signed_in(sign_in("sponsor", PASSWORD, ip=proxy, HTTP_X_FORWARDED_FOR="203.0.113.6"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.0.0.2", "203.0.113.5", "203.0.113.5"),
        # What the client wrote left of the proxies' own entries is ignored.
        ("10.0.0.2", "6.6.6.6, 203.0.113.5", "203.0.113.5"),
        # Two trusted proxies in a row are both peeled off.
        ("10.0.0.2", "203.0.113.5, 10.0.0.3", "203.0.113.5"),
        # A malformed hop ends the walk at the last address a trusted proxy vouched for.
        ("10.0.0.2", "203.0.113.5, not-an-ip", "10.0.0.2"),
        ("10.0.0.2", "", "10.0.0.2"),
        ("::ffff:10.0.0.2", "203.0.113.5", "203.0.113.5"),
        # An untrusted peer is the client, whatever it sends.
        ("203.0.113.8", "10.0.0.3", "203.0.113.8"),
        # A peer without an address (a Unix socket) is counted, not a server error.
        ("", "203.0.113.5", "unknown"),
    ],
)
def test_the_client_address_is_read_through_trusted_proxies_only(
    db, settings, peer, forwarded, client
):
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    assert sign_in("someone", "wrong", ip=peer, HTTP_X_FORWARDED_FOR=forwarded).status_code == 200
    assert AuditEvent.objects.get(verb="login.failed").data["client_ip"] == client


def test_gunicorn_believes_forwarded_headers_from_the_same_proxies():
    root = Path(__file__).resolve().parents[2]
    gunicorn = Path(sys.executable).with_name("gunicorn")

    def forwarded_allow_ips(**env):
        env = {**os.environ, **env}
        env.pop("FORWARDED_ALLOW_IPS", None)
        output = subprocess.run(
            [str(gunicorn), "--print-config", "config.wsgi"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return next(line for line in output.splitlines() if line.startswith("forwarded_allow_ips"))

    assert forwarded_allow_ips(TRUSTED_PROXIES="10.0.0.0/24, 192.168.1.5").endswith(
        "['10.0.0.0/24', '192.168.1.5/32']"
    )
    assert forwarded_allow_ips(TRUSTED_PROXIES="").endswith("[]")
