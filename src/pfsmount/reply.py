"""The NextDatum answer and its refusals, free of any transport.

The datum loop produces these; the gRPC server (`protocol.py`), the Unix-socket server
(`local.py`) and the clients translate them to their wire. Nothing here imports grpc, sockets
or trio, so the loop can be tested, and later driven from another machine, without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Reply:
    """The worker's answer to one NextDatum call."""

    env: tuple[str, ...]
    done: bool = False
    datum_id: str = ""


class WorkerGone(Exception):
    """Raised by the NextDatum callback when the job (or this worker) is shutting down.

    A transport aborts the call with UNAVAILABLE and this exception's message.
    """


class WorkerRefused(Exception):
    """Raised by the NextDatum callback to refuse a call for a reason the caller must see.

    A transport fails the call with FAILED_PRECONDITION and exactly this message (e.g.
    Pachyderm's "datum batching not enabled").
    """


NextDatumFn = Callable[[str, bool], Reply]
"""``(error, own_client) -> Reply``: finish the current datum and block until the next is ready.

Called on a transport's thread. ``own_client`` is False for Pachyderm's method, True for
pfsmount's.
"""


class NextDatumHandler(Protocol):
    """What a transport on the trio thread calls: one worker's NextDatum (`worker.Worker`)."""

    async def next_datum(self, error: str, own_client: bool) -> Reply: ...
