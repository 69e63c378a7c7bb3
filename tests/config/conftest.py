"""Fixtures shared with the approvals tests."""

from tests.approvals.conftest import privileges  # noqa: F401  (a fixture)
