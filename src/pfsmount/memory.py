"""Start-up allocates a few hundred thousand long-lived objects; the cyclic GC should not care.

Listing a 100,000-file repo and expanding its datums create entries, inputs and datums that
live for the whole job and hold no reference cycles. With the collector running, every few
hundred allocations trigger a collection that walks all of them again: a third of the time
to the first datum. `bulk_allocation` pauses the collector for such a phase and then freezes
what survived (`gc.freeze`), so later collections during the job skip it too.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def bulk_allocation() -> Iterator[None]:
    """Pause cyclic garbage collection; afterwards, exempt the survivors from it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
