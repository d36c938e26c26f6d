"""The worker's Unix socket for pfsmount's own clients (framing in `wire.py`).

A call here runs `Worker.next_datum` directly on the trio thread: no HTTP/2, and no hop
from a gRPC thread into trio and back, which is most of what a NextDatum costs over gRPC.

Only the job's user code may call: the socket lives in a directory no one else can enter
(0700, owned by pfsmount), and each connection's peer credentials are checked once, when it
is accepted (`JobPeers.check_unix`).
"""

from __future__ import annotations

import logging
import os
import socket
import stat

import trio

from pfsmount.peers import JobPeers, PeerRefused
from pfsmount.reply import NextDatumHandler, WorkerGone, WorkerRefused
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

log = logging.getLogger(__name__)

# A frame's payload follows its header at once; a caller that stops half-way is cut off.
FRAME_TIMEOUT = 10.0


class SocketDirError(OSError):
    """The worker socket's directory is reachable by others; the message names it and the fix."""


def private_dir(directory: str) -> None:
    """Make sure `directory` exists and only pfsmount's uid can enter it (or say why not).

    Created 0700 when missing. An existing one is never loosened or tightened behind the
    user's back: if others can enter it, or it is a symlink or someone else's, it is refused.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    problem = ""
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory (a symlink?)"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not to pfsmount (uid {os.geteuid()})"
    elif st.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(st.st_mode):04o}, so other users can reach it"
    if problem:
        raise SocketDirError(
            f"the worker socket's directory {directory} {problem}; it must be a directory of "
            "pfsmount's own user with mode 0700 (remove it and let pfsmount create it)"
        )


async def serve_local(
    path: str,
    loop: NextDatumHandler,
    peers: JobPeers | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer NextDatum calls on the Unix socket `path` until cancelled.

    Callers are checked against `peers` (default: this process's uid only).
    """
    peers = peers if peers is not None else JobPeers()
    private_dir(os.path.dirname(os.path.abspath(path)))
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(64)
    listener = trio.SocketListener(sock)
    task_status.started()

    async def connection(stream: trio.SocketStream) -> None:
        try:
            try:
                peers.check_unix(stream.socket)  # type: ignore[arg-type]
            except PeerRefused as exc:
                log.warning("%s", exc)
                # Take the request first, so the caller reads why instead of a broken pipe.
                with trio.move_on_after(1.0):
                    await stream.receive_some(65536)
                await stream.send_all(frame(REPLY_REFUSED, str(exc).encode()))
                return
            await _serve_connection(stream, loop)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            await stream.aclose()

    await trio.serve_listeners(connection, [listener])


async def _serve_connection(stream: trio.SocketStream, loop: NextDatumHandler) -> None:
    reader = _Reader(stream)
    while True:
        header = await reader.exactly(5)
        if header is None:
            return
        try:
            length, kind = unframe_header(header)
            if kind not in (ASK_PFSMOUNT, ASK_PACHYDERM):
                raise DecodeError(f"unknown request kind {kind}")
            payload = None
            with trio.move_on_after(FRAME_TIMEOUT):
                payload = await reader.exactly(length)
            if payload is None:
                raise DecodeError(f"the rest of a {length}-byte frame never came")
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
