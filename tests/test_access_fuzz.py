"""Issue 11: malformed input on the worker socket and the gRPC port (hypothesis).

Whatever arrives is answered with an error or a closed connection: never a crash, a hang, or
a datum loop that moved. Both servers are the real ones, with a loop that counts its calls.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pfsmount import local
from pfsmount.protocol import PACHYDERM_NEXT_DATUM, PFSMOUNT_NEXT_DATUM, Reply, WorkerServer
from pfsmount.wire import (
    MAX_FRAME,
    REPLY_REFUSED,
    DecodeError,
    LocalWorker,
    NextDatumRequest,
    NextDatumResponse,
    unframe_header,
)

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class CountingLoop:
    """Stands in for DatumLoop: every call that reaches it moves it one datum."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    async def next_datum(self, error: str, own_client: bool) -> Reply:
        return self.sync_next_datum(error, own_client)

    def sync_next_datum(self, error: str, own_client: bool) -> Reply:
        with self._lock:
            self.calls += 1
            return Reply(env=(f"N={self.calls}",), datum_id=f"d{self.calls}")


@pytest.fixture
def local_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, CountingLoop]]:
    monkeypatch.setattr(local, "FRAME_TIMEOUT", 0.1)  # a stalled frame is cut off quickly
    path = str(tmp_path / "worker.sock")
    loop = CountingLoop()
    started = threading.Event()
    token: list[trio.lowlevel.TrioToken] = []
    stop = threading.Event()

    async def main() -> None:
        token.append(trio.lowlevel.current_trio_token())
        async with trio.open_nursery() as nursery:
            await nursery.start(local.serve_local, path, loop)
            started.set()
            await trio.to_thread.run_sync(stop.wait)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(10)
    yield path, loop
    stop.set()
    thread.join(10)
    assert not thread.is_alive(), "the local server did not stop"


def _exchange(path: str, data: bytes, *, close_write: bool = True) -> bytes:
    """Send `data`, then read until the server closes (5 s at most: more is a hang)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        try:
            sock.sendall(data)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already answered and closed: fine
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"the server neither answered nor closed: {data[:40]!r}") \
                from None
        return received


def _well_formed_first_frame(data: bytes) -> bool:
    if len(data) < 5:
        return False
    try:
        length, kind = unframe_header(data[:5])
        if kind not in (0, 1) or len(data) < 5 + length:
            return False
        NextDatumRequest.decode(data[5:5 + length], exact=True)
    except (DecodeError, struct.error):
        return False
    return True


def _assert_refused_or_closed(received: bytes) -> None:
    if not received:
        return  # closed without a word: the caller sent nothing complete
    length, kind = unframe_header(received[:5])
    assert kind == REPLY_REFUSED, received
    assert received[5:5 + length].startswith(b"malformed request"), received
    assert len(received) == 5 + length, "the server went on after refusing"


frames = st.one_of(
    st.binary(max_size=64),  # anything at all
    # A header whose length is out of bounds.
    st.builds(lambda n, k, rest: struct.pack(">IB", n, k) + rest,
              st.one_of(st.just(0), st.integers(MAX_FRAME + 1, 2**32 - 1)),
              st.integers(0, 255), st.binary(max_size=16)),
    # A complete frame of an unknown kind, or of a known kind with a payload that is no
    # NextDatumRequest.
    st.builds(lambda k, p: struct.pack(">IB", len(p) + 1, k) + p,
              st.integers(0, 255), st.binary(max_size=48)),
    # A frame cut short.
    st.builds(lambda n, p: struct.pack(">IB", n + len(p) + 1, 0) + p,
              st.integers(1, 1000), st.binary(max_size=16)),
)


@FUZZ
@given(data=frames)
def test_garbage_on_the_worker_socket_never_moves_the_loop(
    local_server: tuple[str, CountingLoop], data: bytes
) -> None:
    assume(not _well_formed_first_frame(data))
    path, loop = local_server
    before = loop.calls
    _assert_refused_or_closed(_exchange(path, data))
    assert loop.calls == before


@settings(FUZZ, max_examples=10)
@given(length=st.integers(2, 4096), sent=st.binary(max_size=8))
def test_a_stalled_frame_is_cut_off(
    local_server: tuple[str, CountingLoop], length: int, sent: bytes
) -> None:
    assume(len(sent) < length - 1)
    path, loop = local_server
    received = _exchange(path, struct.pack(">IB", length, 0) + sent, close_write=False)
    _assert_refused_or_closed(received)
    assert loop.calls == 0


def test_the_worker_socket_still_serves_after_garbage(
    local_server: tuple[str, CountingLoop]
) -> None:
    path, loop = local_server
    for data in (b"\xff" * 9, struct.pack(">IB", 3, 7) + b"ab", struct.pack(">IB", 2, 0) + b"\x0a"):
        _assert_refused_or_closed(_exchange(path, data))
    worker = LocalWorker(path)
    try:
        reply = worker.next_datum("")
    finally:
        worker.close()
    assert reply.datum_id == "d1" and loop.calls == 1


# ----- gRPC -----------------------------------------------------------------------------


@pytest.fixture
def grpc_server() -> Iterator[tuple[int, CountingLoop]]:
    loop = CountingLoop()
    server = WorkerServer(loop.sync_next_datum)
    port = server.start()
    yield port, loop
    server.stop()


def _undecodable(payload: bytes) -> bool:
    try:
        NextDatumRequest.decode(payload)
    except DecodeError:
        return True
    return False


@FUZZ
@given(payload=st.binary(min_size=1, max_size=64), own=st.booleans())
def test_malformed_grpc_requests_are_invalid_arguments(
    grpc_server: tuple[int, CountingLoop], payload: bytes, own: bool
) -> None:
    assume(_undecodable(payload))
    port, loop = grpc_server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(PFSMOUNT_NEXT_DATUM if own else PACHYDERM_NEXT_DATUM)
        with pytest.raises(grpc.RpcError) as caught:
            method(payload, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert loop.calls == 0


@FUZZ
@given(garbage=st.binary(max_size=256), preface=st.booleans())
def test_garbage_on_the_grpc_port_closes_the_connection(
    grpc_server: tuple[int, CountingLoop], garbage: bytes, preface: bool
) -> None:
    port, loop = grpc_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall((HTTP2_PREFACE if preface else b"") + garbage)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        except TimeoutError:
            raise AssertionError(f"the gRPC server kept a garbage connection: {garbage!r}") \
                from None
    assert loop.calls == 0


def test_the_grpc_port_still_serves_after_garbage(grpc_server: tuple[int, CountingLoop]) -> None:
    port, loop = grpc_server
    for garbage in (b"GET / HTTP/1.1\r\n\r\n", HTTP2_PREFACE + b"\x00" * 40, b"\xff" * 100):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(65536):
                    pass
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = NextDatumResponse.decode(
            channel.unary_unary(PFSMOUNT_NEXT_DATUM)(b"", timeout=5))
    assert reply.datum_id == "d1" and loop.calls == 1
