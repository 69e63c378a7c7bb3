"""What `approvals` tells the apps above it, without importing them (the layers point one way).

`grants_ended` is sent inside the transaction that ends grants (revoked, completed, expired,
cascaded, the agent suspended), after the grant rows are locked and marked, with `endings`: a
list of `GrantEnding`. A receiver writes in that same transaction (ssf/receivers.py writes its
outbox of Security Event Tokens there, so an ending is never committed without its events), and
one that raises rolls the ending back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.dispatch import Signal

grants_ended = Signal()


@dataclass(frozen=True)
class GrantEnding:
    grant_id: int
    reason: str
    ended_at: datetime
    cascade_from: int | None
