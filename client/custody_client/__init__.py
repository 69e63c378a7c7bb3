"""custody-client: what agents and resource servers use to talk to Custody.

For agents: `Client` / `AsyncClient` ask for privileges and return a `Grant` whose token stays
fresh; `requires` guards a function with a grant; SVIDs come from `FileSvidSource`,
`WorkloadApiSvidSource`, `CallableSvidSource` or (development) `DevSvidSource`. Every refusal is
a `CustodyError` subclass (see `custody_client.errors`). The `custody` command line wraps it.
"""

from custody_client.client import AsyncClient, AsyncGrant, Client, Delegation, Grant, Retry
from custody_client.decorators import requires
from custody_client.errors import (
    Conflict,
    CustodyError,
    Denied,
    Expired,
    Forbidden,
    GrantEnded,
    InvalidRequest,
    NotEligible,
    NotFound,
    PendingApproval,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from custody_client.svid import (
    CallableSvidSource,
    DevSvidSource,
    FileSvidSource,
    SvidSource,
    SvidUnavailable,
    WorkloadApiSvidSource,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncGrant",
    "CallableSvidSource",
    "Client",
    "Conflict",
    "CustodyError",
    "Delegation",
    "Denied",
    "DevSvidSource",
    "Expired",
    "FileSvidSource",
    "Forbidden",
    "Grant",
    "GrantEnded",
    "InvalidRequest",
    "NotEligible",
    "NotFound",
    "PendingApproval",
    "RateLimited",
    "Retry",
    "SvidSource",
    "SvidUnavailable",
    "Unauthenticated",
    "Unavailable",
    "WorkloadApiSvidSource",
    "requires",
]
