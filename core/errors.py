"""Domain errors raised by services; the API maps them to 4xx JSON, the UI to messages."""


class DomainError(Exception):
    """A rule said no. `code` is stable for machines, `message` is for people."""

    status_code = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, fields: dict | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.fields = fields or {}


class InvalidInput(DomainError):
    status_code = 400
    code = "invalid"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    """The thing is no longer in a state that allows this (409)."""

    status_code = 409
    code = "conflict"


class TooManyRequests(DomainError):
    """Come back later (429): `retry_after` seconds is when trying again can succeed."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class Unavailable(DomainError):
    """Custody cannot do this now (503): `retry_after` seconds is when to try again."""

    status_code = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))
