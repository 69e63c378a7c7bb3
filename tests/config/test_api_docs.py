"""The API docs are served by the app itself, under the same strict CSP as the admin and the UI."""

import re

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}


def test_the_docs_page_loads_only_same_origin_scripts_and_styles():
    response = Client().get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    sources = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", html)
    assert sources, html
    # Our own static files (the sidecar) and the init script from the view itself.
    assert all(src.startswith("/") and not src.startswith("//") for src in sources), sources
    assert "cdn.jsdelivr.net" not in html and "@latest" not in html
    # Nothing the policy would block: no inline script or style block.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html
    links = re.findall(r"<link[^>]*\bhref=\"([^\"]+)\"", html)
    assert all(href.startswith("/") and not href.startswith("//") for href in links), links


def test_the_docs_init_script_is_served_as_javascript_under_the_policy():
    response = Client().get("/api/docs/?script=")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in response.content.decode()
    assert directives(response)["script-src"] == ["'self'"]


def test_the_admin_sign_in_page_carries_the_policy_too():
    # The admin signs in on the one sign-in page, where a second factor is asked for.
    response = Client().get("/admin/login/", follow=True)

    assert response.redirect_chain[-1][0].startswith("/login/?next=")
    assert response.status_code == 200
    assert directives(response)["script-src"] == ["'self'"]


@pytest.mark.parametrize(
    "url", ["/api/docs/", "/admin/", "/admin/auth/user/", "/admin/auth/user/add/"]
)
def test_the_docs_and_the_admin_carry_a_strict_content_security_policy(admin_user, url):
    client = Client()
    client.force_login(admin_user)

    response = client.get(url)

    assert response.status_code == 200
    policy = directives(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    assert "'unsafe-eval'" not in response["Content-Security-Policy"]
