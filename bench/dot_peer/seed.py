"""Seed the peer (after `migrate`): a resource owner, a confidential client-credentials
application for the resource server, the resource server's bearer token with the
`introspection` scope, and a live `read` token to introspect. Prints both tokens as JSON.

    DJANGO_SETTINGS_MODULE=bench.dot_peer.settings python -m bench.dot_peer.seed
"""

import json
import secrets
from datetime import timedelta

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.utils import timezone  # noqa: E402
from oauth2_provider.models import get_access_token_model, get_application_model  # noqa: E402


def seed() -> dict[str, str]:
    Application, AccessToken = get_application_model(), get_access_token_model()
    owner = get_user_model().objects.create_user(username="payments-owner")
    resource_server = Application.objects.create(
        name="payments-db gateway",
        user=owner,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
    )
    agent_app = Application.objects.create(
        name="invoice bot",
        user=owner,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
    )
    expires = timezone.now() + timedelta(hours=10)
    tokens = {"server": secrets.token_urlsafe(30), "token": secrets.token_urlsafe(30)}
    AccessToken.objects.create(
        application=resource_server, token=tokens["server"], scope="introspection", expires=expires
    )
    AccessToken.objects.create(
        application=agent_app, user=owner, token=tokens["token"], scope="read", expires=expires
    )
    return tokens


if __name__ == "__main__":
    print(json.dumps(seed()))
