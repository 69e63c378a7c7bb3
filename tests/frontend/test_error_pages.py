"""Custody's own error pages through HTTP: each says what was refused in a sentence, in the
site's frame (500 in a frame of its own); under /api/ the answer stays JSON; an htmx action
refused before its view runs gets the sentence alone, aimed at the message area."""

import pytest
from django.test import Client
from django.urls import path

from config import urls as project_urls
from tests.factories import UserFactory

HTMX = {"HTTP_HX_REQUEST": "true"}


def boom(request):
    raise RuntimeError("a bug, on purpose")


# The project's URLs plus one view that fails, for the 500 page.
urlpatterns = [path("boom/", boom), path("api/v1/boom", boom), *project_urls.urlpatterns]
handler400, handler403 = project_urls.handler400, project_urls.handler403
handler404, handler500 = project_urls.handler404, project_urls.handler500


def text(response) -> str:
    return response.content.decode()


@pytest.fixture
def with_boom(settings):
    settings.ROOT_URLCONF = __name__


def test_an_unknown_page_is_custodys_404_with_the_nav(web, sponsor):
    response = web(sponsor).get("/no-such-page/")

    html = text(response)
    assert response.status_code == 404
    assert '<h1 id="refusal-h">Not found</h1>' in html
    assert "There is nothing here that you can see" in html
    assert 'aria-label="Main"' in html  # signed in: the site's frame, nav and all


def test_a_request_the_person_cannot_see_is_named_in_the_404(web, outsider, pending):
    access_request = pending()

    response = web(outsider).get(f"/requests/{access_request.pk}/")

    assert response.status_code == 404
    assert f"There is no request #{access_request.pk} that you can see." in text(response)
    assert access_request.agent.name not in text(response)  # nothing leaks about what exists


def test_a_refusal_is_custodys_403_carrying_its_reason(web, agent, team, granted):
    grant = granted()
    teammate = UserFactory(username="teammate")
    teammate.groups.add(team)  # sees the grant; may not revoke it

    response = web(teammate).get(f"/grants/{grant.pk}/revoke/")

    html = text(response)
    assert response.status_code == 403
    assert '<h1 id="refusal-h">Not allowed</h1>' in html
    assert (
        "You may not do this: it needs the right to manage (suspend, reactivate, revoke the "
        "grants of) Invoice bot, which you do not hold." in html
    )


def test_a_form_without_its_csrf_token_is_refused_in_a_sentence(sponsor, agent):
    client = Client(enforce_csrf_checks=True)
    client.force_login(sponsor)

    page = client.post(f"/agents/{agent.pk}/suspend/", {"reason": "leak"})
    htmx = client.post(f"/agents/{agent.pk}/suspend/", {"reason": "leak"}, **HTMX)

    assert page.status_code == 403
    assert "This form had expired (or was sent from another site)" in text(page)
    assert '<h1 id="refusal-h">Form expired</h1>' in text(page)
    assert htmx.status_code == 403
    assert (htmx["HX-Retarget"], htmx["HX-Reswap"]) == ("#messages", "innerHTML")
    assert "<html" not in text(htmx)
    assert "This form had expired" in text(htmx)


def test_a_bad_request_is_custodys_400_without_the_internals(db):
    response = Client().get("/login/", HTTP_HOST="evil.example")

    html = text(response)
    assert response.status_code == 400
    assert "The request was not valid, so nothing was changed." in html
    assert "evil.example" not in html  # the host check's words are for the log


def test_a_failure_is_custodys_500_page_in_a_frame_of_its_own(with_boom, sponsor):
    client = Client(raise_request_exception=False)
    client.force_login(sponsor)

    response = client.get("/boom/")

    html = text(response)
    assert response.status_code == 500
    assert "Something went wrong on our side" in html
    assert "it has been logged" in html
    assert "a bug, on purpose" not in html and "RuntimeError" not in html
    assert 'aria-label="Main"' not in html  # no nav, session or database needed
    assert "/static/custody/custody.css" in html


def test_an_htmx_action_refused_before_its_view_gets_a_sentence_for_the_message_area(
    web, outsider, pending
):
    access_request = pending()

    response = web(outsider).post(
        f"/requests/{access_request.pk}/decide/", {"verdict": "approve"}, **HTMX
    )

    assert response.status_code == 404
    assert (response["HX-Retarget"], response["HX-Reswap"]) == ("#messages", "innerHTML")
    assert text(response).strip() == (
        f'<p class="message error" role="alert">There is no request #{access_request.pk} '
        "that you can see.</p>"
    )
    assert not access_request.decisions.exists()


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [("/api/v1/no-such-thing", 404, "not_found"), ("/api/v1/boom", 500, "server_error")],
)
def test_the_api_keeps_its_json_errors(with_boom, db, url, status, code):
    response = Client(raise_request_exception=False).get(url)

    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == code


def test_error_pages_keep_the_csp(web, sponsor):
    response = web(sponsor).get("/no-such-page/")

    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert "<script>" not in text(response) and 'style="' not in text(response)
