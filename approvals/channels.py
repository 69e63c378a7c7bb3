"""The seam between request/grant state changes and the places people and workers hear of them.

Services call these after commit (`transaction.on_commit`), never inside a transaction, so slow
or failing delivery can never hold a lock or undo a decision. The web inbox needs nothing here:
it reads state directly.
"""


def request_pending(access_request_id: int) -> None:
    """A request now waits for people."""


def request_updated(access_request_id: int) -> None:
    """An approval arrived but more are needed."""


def request_finished(access_request_id: int) -> None:
    """Approved, denied, expired or cancelled: every message about it shows its final state."""


def grant_issued(grant_id: int) -> None:
    """A grant is in force."""


def grants_ended(grant_ids: list[int]) -> None:
    """Grants ended (expired, completed, revoked, cascaded)."""
