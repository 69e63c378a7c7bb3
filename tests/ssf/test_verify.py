"""The resource server's side fails closed: forged, misaddressed or mistyped Security Event
Tokens change nothing and are refused; forged, misaddressed, expired or revoked access tokens are
refused by the verifier, its WSGI/ASGI middleware and its DRF authentication class; Custody's key
rotation is followed; introspection answers when the keys are out of reach."""

import asyncio
import io
import time
import uuid

import httpx
import jwt
import pytest
from custody_client.django import CustodyTokenAuthentication
from custody_client.middleware import AsgiVerifyMiddleware, WsgiVerifyMiddleware
from custody_client.verify import SESSION_REVOKED, TokenRejected, TokenRevoked
from django.conf import settings
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from approvals.tokens import signing_key_rotate, token_sign
from audit.services import Actor
from tests.factories import PrivilegeFactory
from tests.ssf.conftest import PUSH_SECRET, submit

pytestmark = pytest.mark.django_db(transaction=True)


def grant_token(agent_api, privilege="payments-db:read"):
    body = submit(agent_api, privilege, task_id=uuid.uuid4().hex[:8]).json()
    return body["grant"]["id"], body["grant"]["access_token"]


def custody_kid(verifier):
    return next(iter(httpx.get(verifier.jwks.url).json()["keys"]))["kid"]


def forged_set(signer, *, kid, grant_id, aud, typ="secevent+jwt", iss=None):
    body = {
        "iss": iss or settings.CUSTODY_ISSUER,
        "iat": int(time.time()),
        "jti": uuid.uuid4().hex,
        "aud": aud,
        "events": {SESSION_REVOKED: {"custody": {"grant_id": grant_id}}},
    }
    return jwt.encode(body, signer.private_key, algorithm="ES256", headers={"kid": kid, "typ": typ})


def push(url, token, *, authorization=PUSH_SECRET, content_type="application/secevent+jwt"):
    headers = {"Content-Type": content_type}
    if authorization:
        headers["Authorization"] = authorization
    return httpx.post(url, content=token, headers=headers)


def test_forged_pushed_events_are_refused_and_change_nothing(
    agent_api, privileges, verifier, push_receiver, resource_server, signer
):
    grant_id, token = grant_token(agent_api)
    verifier.verify(token)
    kid = custody_kid(verifier)
    aud = resource_server.spiffe_id

    assert push(push_receiver, forged_set(signer, kid=kid, grant_id=grant_id, aud=aud)).json() == {
        "err": "invalid_request",
        "description": "Signature verification failed",
    }
    unknown_key = forged_set(signer, kid="not-custodys", grant_id=grant_id, aud=aud)
    assert push(push_receiver, unknown_key).json()["err"] == "invalid_key"
    # An access token is not an event, whoever signed it.
    assert push(push_receiver, token).status_code == 400
    assert push(push_receiver, "not.a.jwt").status_code == 400
    assert push(push_receiver, token, authorization=None).status_code == 401
    assert push(push_receiver, token, content_type="application/json").status_code == 400

    assert not verifier.revocations.grant_revoked(grant_id)
    assert verifier.verify(token).grant_id == grant_id


def test_an_event_for_another_receiver_or_from_another_issuer_is_refused(
    agent_api, privileges, verifier, poll_stream, resource_server, resource_server_api
):
    """Genuine events, signed by Custody, but not addressed to this verifier."""
    from custody_client.events import InvalidSecurityEvent

    grant_id, token = grant_token(agent_api)
    agent_api.post(f"/api/v1/grants/{grant_id}/complete")
    sets = resource_server_api.post(
        "/api/v1/ssf/poll", {"returnImmediately": True}, format="json"
    ).json()["sets"]
    genuine = next(iter(sets.values()))
    # Invariant 10: an event is never an access token, neither here nor at Custody.
    with pytest.raises(TokenRejected, match="not a Custody access token"):
        verifier.verify(genuine)
    introspected = resource_server_api.post("/api/v1/introspect", {"token": genuine}, format="json")
    assert introspected.json() == {"active": False}
    verifier.set_audience = "spiffe://example.test/resource-servers/someone-else"
    with pytest.raises(InvalidSecurityEvent) as refused:
        verifier.accept_security_event(genuine)
    assert refused.value.code == "invalid_audience"
    verifier.set_audience, verifier.issuer = resource_server.spiffe_id, "https://other.example"
    with pytest.raises(InvalidSecurityEvent) as refused:
        verifier.accept_security_event(genuine)
    assert refused.value.code == "invalid_issuer"
    assert not verifier.revocations.grant_revoked(grant_id)


def test_bad_access_tokens_are_refused(agent_api, privileges, verifier, signer):
    _, token = grant_token(agent_api)
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload[:-4]}AAAA.{signature}"
    PrivilegeFactory(resource="ledger", action="read", risk="low")
    _, other_audience = grant_token(agent_api, "ledger:read")
    claims = jwt.decode(token, options={"verify_signature": False})
    self_signed = jwt.encode(
        claims,
        signer.private_key,
        algorithm="ES256",
        headers={"kid": jwt.get_unverified_header(token)["kid"], "typ": "at+jwt"},
    )
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"typ": "at+jwt"})
    for bad in (tampered, other_audience, self_signed, unsigned, "", "garbage"):
        with pytest.raises(TokenRejected):
            verifier.verify(bad)
    # Custody's own signature, but past its time.
    expired = token_sign(
        {k: v for k, v in claims.items() if k not in ("iat", "nbf", "exp", "jti", "iss")},
        lifetime_seconds=-5,
        not_after=int(time.time()) + 60,
    ).token
    with pytest.raises(TokenRejected, match="expired"):
        verifier.verify(expired)


def test_custodys_key_rotation_is_followed(agent_api, privileges, verifier):
    _, before = grant_token(agent_api)
    verifier.verify(before)

    signing_key_rotate(actor=Actor.system("test"))
    _, after = grant_token(agent_api)

    assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
    assert verifier.verify(after).subject == "spiffe://example.test/agents/invoice-bot"
    assert verifier.verify(before)  # the previous key still verifies its live tokens


def test_introspection_answers_when_the_keys_are_out_of_reach(
    agent_api, privileges, make_verifier, resource_server, sponsor
):
    from tests.workers import free_port

    verifier = make_verifier(jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    grant_id, token = grant_token(agent_api)

    verified = verifier.verify(token)
    assert verified.online and verified.grant_id == grant_id
    agent_api.post(f"/api/v1/grants/{grant_id}/complete")
    with pytest.raises(TokenRejected, match="not active"):
        verifier.verify(token)


def test_the_wsgi_and_asgi_middleware_admit_only_good_tokens(agent_api, privileges, verifier):
    grant_id, token = grant_token(agent_api)

    def app(environ, start_response):
        start_response("200 OK", [])
        return [environ["custody.token"].acting_agent.encode()]

    def call(middleware, bearer):
        seen = {}

        def start_response(status, headers):
            seen["status"], seen["headers"] = status, dict(headers)

        environ = {"HTTP_AUTHORIZATION": f"Bearer {bearer}", "wsgi.input": io.BytesIO()}
        body = b"".join(middleware(environ, start_response))
        return seen["status"], seen["headers"], body

    status, _, body = call(WsgiVerifyMiddleware(app, verifier), token)
    assert (status, body) == ("200 OK", b"spiffe://example.test/agents/invoice-bot")
    status, headers, _ = call(WsgiVerifyMiddleware(app, verifier, scope="payments-db:write"), token)
    assert status.startswith("403") and 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    verifier.revocations.revoke_grant(grant_id)
    status, headers, body = call(WsgiVerifyMiddleware(app, verifier), token)
    assert status.startswith("401") and b"revoked" in body

    async def asgi_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def asgi_call(bearer):
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "headers": [(b"authorization", f"Bearer {bearer}".encode())]}
        await AsgiVerifyMiddleware(asgi_app, verifier)(scope, None, send)
        return sent[0]["status"]

    _, fresh = grant_token(agent_api)
    assert asyncio.run(asgi_call(fresh)) == 200
    assert asyncio.run(asgi_call(token)) == 401


def test_the_drf_authentication_class(agent_api, privileges, verifier):
    class Authentication(CustodyTokenAuthentication):
        pass

    Authentication.verifier = verifier

    class Payments(APIView):
        authentication_classes = [Authentication]

        def get(self, request):
            request.auth.require_scope("payments-db:read")
            return Response({"agent": request.user.spiffe_id, "task": request.auth.task_id})

    grant_id, token = grant_token(agent_api)
    factory = APIRequestFactory()
    ok = Payments.as_view()(factory.get("/", HTTP_AUTHORIZATION=f"Bearer {token}"))
    assert ok.status_code == 200 and ok.data["agent"].endswith("invoice-bot")
    verifier.revocations.revoke_grant(grant_id)
    refused = Payments.as_view()(factory.get("/", HTTP_AUTHORIZATION=f"Bearer {token}"))
    assert refused.status_code == 401
    assert "revoked" in str(refused.data)


def test_a_revoked_grant_is_refused_as_token_revoked(agent_api, privileges, verifier):
    grant_id, token = grant_token(agent_api)
    verifier.revocations.revoke_grant(grant_id)
    with pytest.raises(TokenRevoked):
        verifier.verify(token)


def test_an_event_that_cannot_be_checked_yet_is_neither_applied_nor_refused(
    agent_api, privileges, make_verifier, resource_server, signer
):
    """Custody's keys out of reach: 503, so the transmitter retries (a 400 would end it)."""
    from custody_client.events import PushReceiver, serve_push_receiver

    from tests.workers import free_port

    verifier = make_verifier(jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    server, url = serve_push_receiver(PushReceiver(verifier, authorization=PUSH_SECRET))
    try:
        event = forged_set(signer, kid="any", grant_id=7, aud=resource_server.spiffe_id)
        response = push(url, event)
    finally:
        server.shutdown()
        server.server_close()

    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert not verifier.revocations.grant_revoked(7)
