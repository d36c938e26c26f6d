"""pfsmount: Pachyderm-style datum batching over a lazy, atomically swapping FUSE /pfs."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pfsmount.client import (
        ClientError,
        Datum,
        batch_datums,
        iter_datums,
        next_datum,
        report_error,
        reporting_errors,
    )

__all__ = [
    "ClientError",
    "Datum",
    "__version__",
    "batch_datums",
    "iter_datums",
    "next_datum",
    "report_error",
    "reporting_errors",
]

# The user-code client is re-exported lazily so `import pfsmount` stays cheap (no grpc) for
# everything that does not step through datums.
_CLIENT_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> object:
    """Load ``pfsmount.client`` the first time one of its names is used."""
    if name in _CLIENT_NAMES:
        from pfsmount import client

        return getattr(client, name)
    raise AttributeError(f"module 'pfsmount' has no attribute {name!r}")
