"""Bad input to the web UI gets a 4xx with a clear message, never a 500: property tests over
every integer-like parameter of the pages (query strings, path ids) and admin's object pages."""

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from audit.models import AuditEvent
from tests.factories import AuditEventFactory
from tests.fuzz import bad_input, in_path, integer_like_text

pytestmark = pytest.mark.django_db

WHOLE = re.compile(r"[0-9]+")


def test_before_on_the_audit_page_that_is_not_a_sequence_number_is_a_400(web, admin_user):
    AuditEventFactory.create_batch(3)
    client = web(admin_user)

    @bad_input
    @given(before=integer_like_text)
    @example(before="²")
    @example(before="٣")
    @example(before="99999999999999999999")
    @example(before="-1")
    def check(before):
        response = client.get("/audit/", {"before": before})
        if before == "" or (WHOLE.fullmatch(before) and len(before) <= 18):
            assert response.status_code == 200, (before, response.status_code)
        else:
            assert response.status_code == 400, (before, response.status_code)
            assert "sequence number" in response.content.decode()

    check()
    last = AuditEvent.objects.order_by("sequence").last().sequence
    page = client.get("/audit/", {"before": str(last)})
    assert [event.sequence for event in page.context["events"]] == list(range(last - 1, 0, -1))


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def test_the_audit_pages_agent_filter_takes_only_an_agent_it_lists(web, admin_user, agent):
    client = web(admin_user)

    @bad_input
    @given(value=integer_like_text)
    @example(value="99999999999999999999")
    @example(value="²")
    @example(value="\x1f")  # str.strip() removes it; the lookup does not
    def check(value):
        response = client.get("/audit/", {"agent": value})
        # The agent's primary key as the database lookup reads it (int(): " 7" and "07" name 7).
        if value == "" or _as_int(value) == agent.pk:
            assert response.status_code == 200
        else:
            assert response.status_code == 400, (value, response.status_code)

    check()


PAGES = [
    ("get", "/requests/{}/"),
    ("post", "/requests/{}/decide/"),
    ("post", "/grants/{}/revoke/"),
    ("post", "/agents/{}/suspend/"),
    ("post", "/agents/{}/reactivate/"),
    ("get", "/admin/agents/agent/{}/change/"),
    ("get", "/admin/agents/agent/{}/permissions/"),
    ("get", "/admin/agents/agent/{}/permissions/user-manage/1/"),
    ("get", "/admin/agents/agent/1/permissions/user-manage/{}/"),
    ("get", "/admin/agents/agent/1/permissions/group-manage/{}/"),
    ("get", "/admin/approvals/accessrequest/{}/change/"),
    ("get", "/admin/approvals/grant/{}/change/"),
]


@pytest.mark.parametrize("method,path", PAGES)
def test_an_id_in_a_page_path_that_names_nothing_is_a_4xx_or_a_redirect(
    web, admin_user, method, path
):
    client = web(admin_user)

    @bad_input
    @given(value=integer_like_text)
    @example(value="99999999999999999999")
    @example(value="9223372036854775808")
    @example(value="²")
    def check(value):
        response = getattr(client, method)(
            path.format(in_path(value)), {"verdict": "deny", "reason": "fuzz"}
        )
        # Admin answers a missing object with a redirect and a message; the UI with a 404.
        assert response.status_code in (302, 404), (value, response.status_code)

    check()


CHANGELISTS = [
    "/admin/agents/agent/",
    "/admin/approvals/accessrequest/",
    "/admin/approvals/grant/",
    "/admin/audit/auditevent/",
]


@pytest.mark.parametrize("changelist", CHANGELISTS)
def test_an_integer_like_changelist_parameter_never_makes_admin_fail(web, admin_user, changelist):
    client = web(admin_user)

    @bad_input
    @given(
        parameter=st.sampled_from(["p", "o", "id__exact", "agent__id__exact", "team__id__exact"]),
        value=integer_like_text,
    )
    @example(parameter="p", value="99999999999999999999")
    @example(parameter="id__exact", value="²")
    def check(parameter, value):
        response = client.get(changelist, {parameter: value})
        assert response.status_code in (200, 302, 400, 404), (
            parameter,
            value,
            response.status_code,
        )

    check()
