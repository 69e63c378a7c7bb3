"""DRF authentication for agents: `Authorization: Bearer <JWT-SVID or OIDC token>`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from rest_framework import authentication, exceptions

from agents.models import Agent
from agents.services import agent_mark_seen
from agents.workload_identity import IdentityRejected, token_fingerprint, verify_workload_token
from audit.services import Actor, record_throttled
from core import log_context
from core.client_ip import client_ip
from core.metrics import AGENT_LOGIN_REJECTIONS

logger = logging.getLogger("custody.security")


@dataclass
class AuthenticatedAgent:
    """`request.user` for an agent's API call. Agents are never Django users."""

    agent: Agent
    claims: dict
    is_authenticated: bool = True
    is_staff: bool = False
    is_superuser: bool = False

    def __str__(self) -> str:
        return self.agent.spiffe_id


def bearer_token(request) -> str | None:
    header = authentication.get_authorization_header(request).split()
    if not header or header[0].lower() != b"bearer":
        return None
    if len(header) != 2:
        raise exceptions.AuthenticationFailed(
            "The Authorization header must be 'Bearer <token>'.", code="malformed_token"
        )
    try:
        return header[1].decode("ascii")
    except UnicodeDecodeError:
        raise exceptions.AuthenticationFailed("The token is not ASCII.", code="malformed_token")


def _audit_rejection(request, token: str, rejected: IdentityRejected) -> None:
    AGENT_LOGIN_REJECTIONS.labels(reason=rejected.reason).inc()
    address = client_ip(request) or "unknown"  # through TRUSTED_PROXIES, as sign-ins are
    # A verified signature names the agent: the evidence is about it, and its sponsor sees it.
    agent = rejected.agent
    record_throttled(
        bucket=f"auth:{rejected.reason}",
        per_minute=settings.CUSTODY_AUTH_FAILURE_AUDIT_PER_MINUTE,
        actor=Actor.for_agent(agent) if agent else Actor.anonymous(address),
        verb="auth.rejected",
        agent_id=agent.pk if agent else None,
        data={
            "address": address,
            "reason": rejected.reason,
            "token_sha256": token_fingerprint(token),
            "jti": rejected.claims.get("jti"),
            "claimed_sub": rejected.claims.get("sub"),
            "path": request.path,
        },
    )


class WorkloadIdentityAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        token = bearer_token(request)
        if token is None:
            return None
        try:
            identity = verify_workload_token(token)
        except IdentityRejected as rejected:
            logger.warning(
                "Agent authentication rejected: %s",
                rejected.reason,
                extra={
                    "event": "auth.rejected",
                    "reason": rejected.reason,
                    "claimed_sub": rejected.claims.get("sub"),
                    "path": request.path,
                },
            )
            _audit_rejection(request, token, rejected)
            raise exceptions.AuthenticationFailed(rejected.message, code=rejected.reason)
        log_context.bind(agent=identity.agent.spiffe_id)
        agent_mark_seen(agent=identity.agent)
        return AuthenticatedAgent(agent=identity.agent, claims=identity.claims), identity.claims

    def authenticate_header(self, request):
        return 'Bearer realm="custody"'
