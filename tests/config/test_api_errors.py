"""Every error under /api/ is the JSON envelope, even where no API view answers."""

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_an_unknown_api_path_is_a_json_404():
    response = APIClient().get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "Not found.", "fields": {}}
    }
