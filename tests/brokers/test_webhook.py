"""The webhook broker against a local receiver (tests/fake_webhook.py, built on
examples/webhook_receiver.py) that verifies every request with Custody's JWKS."""

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

from approvals import tokens
from brokers.base import BrokerConfigError, BrokerError, BrokerUnavailable, Holder, get_broker
from brokers.webhook import REQUEST_TYPE, WebhookBroker  # noqa: F401  (registers the kind)
from tests.agents.conftest import self_signed_certificate
from tests.fake_webhook import FakeWebhook

HOLDER = Holder(
    agent="spiffe://example.test/agents/billing-bot",
    privilege="billing:write",
    grant_id=42,
    task_id="task-7",
)


@pytest.fixture
def receiver(db):
    tokens._current_signing_key()  # the key exists before the receiver reads the JWKS
    receiver = FakeWebhook(
        issuer=settings.CUSTODY_ISSUER, audience="billing", jwks=tokens.public_jwks()
    ).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def config(receiver):
    return {"url": receiver.url, "audience": "billing", "timeout": 5}


def _expiry():
    return datetime.now(UTC) + timedelta(minutes=10)


def test_it_creates_a_credential_the_receiver_provisioned(receiver, config):
    expires_at = _expiry()
    issued = get_broker("webhook").create(
        config, name="custody-g42", expires_at=expires_at, holder=HOLDER
    )
    assert issued.secret["username"] == "custody-g42"
    assert issued.secret["password"]
    assert "custody-g42" in receiver.accounts.live
    (claims,) = receiver.actions("create")
    assert claims["aud"] == "billing"
    assert claims["iss"] == settings.CUSTODY_ISSUER
    assert claims["credential"] == "custody-g42"
    assert claims["sub"] == HOLDER.agent
    assert claims["privilege"] == "billing:write"
    assert claims["grant_id"] == 42
    assert claims["task_id"] == "task-7"
    assert claims["expires_at"] == int(expires_at.timestamp())
    assert issued.secret["password"] not in repr(issued.details)
    assert get_broker("webhook").exists(config, name="custody-g42", holder=HOLDER)


def test_it_destroys_and_a_second_destroy_is_fine(receiver, config):
    broker = get_broker("webhook")
    broker.create(config, name="custody-g43", expires_at=_expiry(), holder=HOLDER)
    broker.destroy(config, name="custody-g43", holder=HOLDER)
    assert "custody-g43" not in receiver.accounts.live
    broker.destroy(config, name="custody-g43", holder=HOLDER)  # the receiver answers 404
    assert [c["action"] for c in receiver.actions("destroy")] == ["destroy", "destroy"]
    assert receiver.actions("destroy")[0]["sub"] == HOLDER.agent
    assert not broker.exists(config, name="custody-g43")


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_a_failing_receiver_is_unavailable_and_the_retry_works(receiver, config, status):
    broker = get_broker("webhook")
    receiver.answer_next(status, b"try later")
    with pytest.raises(BrokerUnavailable, match=f"answered {status}"):
        broker.create(config, name="custody-g44", expires_at=_expiry(), holder=HOLDER)
    assert broker.create(config, name="custody-g44", expires_at=_expiry(), holder=HOLDER)
    receiver.answer_next(status)
    with pytest.raises(BrokerUnavailable):
        broker.destroy(config, name="custody-g44", holder=HOLDER)
    broker.destroy(config, name="custody-g44", holder=HOLDER)
    assert "custody-g44" not in receiver.accounts.live


def test_a_receiver_that_is_down_is_unavailable(receiver, config):
    receiver.stop()
    with pytest.raises(BrokerUnavailable, match="cannot be reached"):
        get_broker("webhook").destroy(config, name="custody-g45", holder=HOLDER)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"username=x password=s3cret-answer", "not JSON"),
        (b'["s3cret-answer"]', "not a non-empty object"),
        (b"{}", "not a non-empty object"),
        (b"[" * 16000, "not JSON"),
        (json.dumps({"password": "s3cret-answer" * 2000}).encode(), "larger than 16384 bytes"),
    ],
)
def test_a_bad_answer_is_an_error_that_does_not_quote_it(receiver, config, answer, message):
    receiver.answer_next(200, answer)
    with pytest.raises(BrokerError, match=message) as refused:
        get_broker("webhook").create(config, name="custody-g46", expires_at=_expiry())
    assert not isinstance(refused.value, BrokerUnavailable)
    assert "s3cret-answer" not in str(refused.value)


def test_a_refusal_is_an_error_not_an_outage(receiver, config):
    broker = get_broker("webhook")
    receiver.answer_next(403, b"this account is frozen")
    with pytest.raises(BrokerError, match="refused destroy with 403: this account is frozen"):
        broker.destroy(config, name="custody-g47")
    receiver.answer_next(302)
    with pytest.raises(BrokerError, match="redirects are not followed") as redirected:
        broker.destroy(config, name="custody-g47")
    assert not isinstance(redirected.value, BrokerUnavailable)
    receiver.answer_next(410)
    broker.destroy(config, name="custody-g47")  # gone already: destroyed


def test_the_receiver_refuses_a_request_for_another_audience(receiver, config):
    with pytest.raises(BrokerError, match="refused create with 401"):
        get_broker("webhook").create(
            {**config, "audience": "payments"}, name="custody-g48", expires_at=_expiry()
        )
    assert receiver.seen[-1].refusal == "Audience doesn't match"
    assert not receiver.accounts.live


def _post(receiver, token: str) -> int:
    request = urllib.request.Request(receiver.url, data=token.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_receiver_refuses_a_tampered_or_foreign_signature(receiver):
    claims = {
        "iss": settings.CUSTODY_ISSUER,
        "aud": "billing",
        "iat": int(datetime.now(UTC).timestamp()),
        "exp": int(datetime.now(UTC).timestamp()) + 60,
        "jti": "tampered-1",
        "action": "create",
        "credential": "custody-g49",
    }
    token = tokens.jwt_sign_typed(claims, typ=REQUEST_TYPE)
    header, payload, signature = token.split(".")
    other = jwt.utils.base64url_encode(json.dumps({**claims, "credential": "root"}).encode())
    assert _post(receiver, f"{header}.{other.decode()}.{signature}") == 401
    kid = jwt.get_unverified_header(token)["kid"]
    foreign = jwt.encode(
        {**claims, "jti": "foreign-1"},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": kid, "typ": REQUEST_TYPE},
    )
    assert _post(receiver, foreign) == 401
    assert [seen.status for seen in receiver.seen] == [401, 401]
    assert not receiver.accounts.live
    assert _post(receiver, token) == 201  # the untouched request is accepted
    assert _post(receiver, token) == 401  # once
    assert receiver.seen[-1].refusal == "replayed request"


def test_its_request_is_never_an_access_token(receiver, config):
    get_broker("webhook").create(config, name="custody-g50", expires_at=_expiry())
    (claims,) = receiver.actions("create")
    token = tokens.jwt_sign_typed(claims, typ=REQUEST_TYPE)
    with pytest.raises(tokens.TokenInvalid):
        tokens.token_verify(token)


def test_plain_http_is_refused_unless_allowed(receiver, config, settings):
    settings.CUSTODY_BROKER_WEBHOOK_ALLOW_HTTP = False
    broker = get_broker("webhook")
    with pytest.raises(BrokerConfigError, match="must start with https://"):
        broker.validate_config(config)
    with pytest.raises(BrokerConfigError, match="must start with https://"):
        broker.destroy(config, name="custody-g51")  # saved while allowed, refused now
    assert not receiver.seen


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "url is required"),
        ({"url": "ftp://billing.internal/x"}, "https:// URL"),
        ({"url": "https://user:pw@billing.internal/x"}, "must not hold a user or password"),
        ({"url": "https://billing.internal/x", "timeout": 0}, "timeout must be"),
        ({"url": "https://billing.internal/x", "timeout": "5"}, "timeout must be"),
        ({"url": "https://billing.internal/x", "audience": ""}, "audience must be"),
        ({"url": "https://billing.internal/x", "secret": "x"}, "Unknown field"),
    ],
)
def test_it_refuses_a_bad_configuration(config, message):
    with pytest.raises(BrokerConfigError, match=message):
        get_broker("webhook").validate_config(config)


def test_the_audience_defaults_to_the_url():
    assert get_broker("webhook").validate_config({"url": "https://billing.internal/x"}) == {
        "url": "https://billing.internal/x",
        "audience": "https://billing.internal/x",
        "timeout": 10,
    }


def test_https_to_an_internal_ca_needs_its_bundle(db, settings, tmp_path):
    settings.CUSTODY_BROKER_WEBHOOK_ALLOW_HTTP = False
    tls = self_signed_certificate(tmp_path)
    tokens._current_signing_key()
    receiver = FakeWebhook(
        issuer=settings.CUSTODY_ISSUER, audience="billing", jwks=tokens.public_jwks(), tls=tls
    ).start()
    config = {"url": receiver.url, "audience": "billing"}
    try:
        with pytest.raises(BrokerError, match="certificate Custody does not trust") as refused:
            get_broker("webhook").create(config, name="custody-g52", expires_at=_expiry())
        assert not isinstance(refused.value, BrokerUnavailable)
        settings.CUSTODY_BROKER_WEBHOOK_CA_FILE = str(tls[0])
        issued = get_broker("webhook").create(config, name="custody-g52", expires_at=_expiry())
        assert issued.secret["username"] == "custody-g52"
    finally:
        receiver.stop()
