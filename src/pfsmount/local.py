"""The worker's Unix socket for pfsmount's own clients (framing in `wire.py`).

A call here runs `DatumLoop.next_datum` directly on the trio thread: no HTTP/2, and no hop
from a gRPC thread into trio and back, which is most of what a NextDatum costs over gRPC.
"""

from __future__ import annotations

import logging
import socket

import trio

from pfsmount.protocol import WorkerGone, WorkerRefused
from pfsmount.wire import (
    ASK_PACHYDERM,
    ASK_PFSMOUNT,
    REPLY_GONE,
    REPLY_OK,
    REPLY_REFUSED,
    DecodeError,
    NextDatumRequest,
    NextDatumResponse,
    frame,
    unframe_header,
)
from pfsmount.worker import DatumLoop

log = logging.getLogger(__name__)


async def serve_local(
    path: str, loop: DatumLoop, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer NextDatum calls on the Unix socket `path` until cancelled."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(64)
    listener = trio.SocketListener(sock)
    task_status.started()

    async def connection(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, loop)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            await stream.aclose()

    await trio.serve_listeners(connection, [listener])


async def _serve_connection(stream: trio.SocketStream, loop: DatumLoop) -> None:
    reader = _Reader(stream)
    while True:
        header = await reader.exactly(5)
        if header is None:
            return
        try:
            length, kind = unframe_header(header)
            payload = await reader.exactly(length)
            if payload is None or kind not in (ASK_PFSMOUNT, ASK_PACHYDERM):
                raise DecodeError(f"unknown request kind {kind}")
            error = NextDatumRequest.decode(payload, exact=True).error
        except DecodeError as exc:
            await stream.send_all(frame(REPLY_REFUSED, f"malformed request: {exc}".encode()))
            return
        try:
            reply = await loop.next_datum(error, own_client=kind == ASK_PFSMOUNT)
        except WorkerGone as exc:
            await stream.send_all(frame(REPLY_GONE, str(exc).encode()))
            return
        except WorkerRefused as exc:
            await stream.send_all(frame(REPLY_REFUSED, str(exc).encode()))
            continue
        if reply.done and kind == ASK_PACHYDERM:
            # Pachyderm never answers after the last datum; the worker ends the process.
            await trio.sleep_forever()
        response = NextDatumResponse(reply.env, reply.done, reply.datum_id).encode(exact=True)
        await stream.send_all(frame(REPLY_OK, response))


class _Reader:
    """Reads exact byte counts from a stream, keeping what arrives early."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def exactly(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return None
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data
