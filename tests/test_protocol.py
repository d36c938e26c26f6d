"""The worker protocol: the hand-written codec and the gRPC server, against real clients."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pachyderm_sdk import Client
from pachyderm_sdk.api import worker as sdk_worker

from pfsmount.protocol import (
    PACHYDERM_NEXT_DATUM,
    PFSMOUNT_NEXT_DATUM,
    BindError,
    DecodeError,
    NextDatumFn,
    NextDatumRequest,
    NextDatumResponse,
    Reply,
    WorkerGone,
    WorkerServer,
)

# --- codec ---------------------------------------------------------------------------------

texts = st.text(max_size=40)
requests = st.builds(NextDatumRequest, error=texts)
responses = st.builds(
    NextDatumResponse,
    env=st.lists(texts, max_size=6).map(tuple),
    done=st.booleans(),
    datum_id=texts,
)


@given(requests)
def test_request_round_trips(request: NextDatumRequest) -> None:
    assert NextDatumRequest.decode(request.encode()) == request


@given(responses)
def test_response_round_trips(response: NextDatumResponse) -> None:
    assert NextDatumResponse.decode(response.encode()) == response


@given(texts)
def test_request_matches_pachyderm_sdk_both_ways(error: str) -> None:
    theirs = sdk_worker.NextDatumRequest(error=error)
    assert NextDatumRequest(error).encode() == bytes(theirs)
    assert NextDatumRequest.decode(bytes(theirs)).error == error
    assert sdk_worker.NextDatumRequest().parse(NextDatumRequest(error).encode()) == theirs


@given(st.lists(texts, max_size=6))
def test_response_matches_pachyderm_sdk_both_ways(env: list[str]) -> None:
    theirs = sdk_worker.NextDatumResponse(env=env)
    assert NextDatumResponse(tuple(env)).encode() == bytes(theirs)
    assert NextDatumResponse.decode(bytes(theirs)).env == tuple(env)
    assert sdk_worker.NextDatumResponse().parse(NextDatumResponse(tuple(env)).encode()) == theirs


@given(responses)
def test_pachyderm_sdk_ignores_pfsmount_only_fields(response: NextDatumResponse) -> None:
    parsed = sdk_worker.NextDatumResponse().parse(response.encode())
    assert parsed.env == list(response.env)


def test_empty_message_decodes_to_defaults() -> None:
    assert NextDatumRequest.decode(b"") == NextDatumRequest()
    assert NextDatumResponse.decode(b"") == NextDatumResponse()


UNKNOWN_FIELDS = {
    "varint": b"\x48\x96\x01",  # field 9, 150
    "fixed64": b"\x49" + bytes(8),
    "length-delimited": b"\x4a\x03abc",
    "group": b"\x4b" + b"\x08\x01" + b"\x53\x08\x02\x54" + b"\x4c",  # with a nested group
    "fixed32": b"\x4d" + bytes(4),
    "known field, other wire type": b"\x08\x05",  # field 1 as a varint
}


@pytest.mark.parametrize("unknown", UNKNOWN_FIELDS.values(), ids=UNKNOWN_FIELDS.keys())
def test_decoders_skip_unknown_fields(unknown: bytes) -> None:
    request = NextDatumRequest("boom").encode()
    assert NextDatumRequest.decode(unknown + request + unknown) == NextDatumRequest("boom")
    response = NextDatumResponse(("A=1",), done=True, datum_id="d").encode()
    decoded = NextDatumResponse.decode(unknown + response + unknown)
    assert decoded == NextDatumResponse(("A=1",), done=True, datum_id="d")


def test_last_value_of_a_singular_field_wins() -> None:
    data = NextDatumRequest("first").encode() + NextDatumRequest("second").encode()
    assert NextDatumRequest.decode(data).error == "second"


def test_big_and_negative_varints_decode() -> None:
    for value in (2**63, 2**64 - 1, -1):
        data = b"\x10" + _varint(value % 2**64)  # field 2 (done) as a large varint
        assert NextDatumResponse.decode(data).done


MALFORMED = {
    "truncated varint": b"\x48\x96",
    "varint over 10 bytes": b"\x48" + b"\xff" * 10 + b"\x01",
    "truncated length-delimited": b"\x0a\x05abc",
    "truncated fixed64": b"\x49\x00\x00",
    "truncated fixed32": b"\x4d\x00",
    "wire type 6": b"\x4e\x00",
    "wire type 7": b"\x4f\x00",
    "field number 0": b"\x02\x00",
    "stray end group": b"\x4c",
    "unclosed group": b"\x4b\x08\x01",
    "mismatched end group": b"\x4b\x54",
    "invalid UTF-8": b"\x0a\x02\xff\xfe",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_decoders_reject_malformed_input(data: bytes) -> None:
    with pytest.raises(DecodeError):
        NextDatumRequest.decode(data)
    with pytest.raises(DecodeError):
        NextDatumResponse.decode(data)


@given(st.binary(max_size=64))
def test_decoders_fail_only_with_decode_error(data: bytes) -> None:
    for message in (NextDatumRequest, NextDatumResponse):
        with contextlib.suppress(DecodeError):
            message.decode(data)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


# --- server --------------------------------------------------------------------------------


class FakeWorker:
    """A NextDatum callback that records its calls and answers with ``reply``."""

    def __init__(self, reply: Reply | Exception) -> None:
        self.reply = reply
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, error: str, own_client: bool) -> Reply:
        self.calls.append((error, own_client))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


@pytest.fixture
def worker() -> FakeWorker:
    return FakeWorker(Reply(env=("A=1", "B=two"), datum_id="datum-1"))


@contextlib.contextmanager
def serving(callback: NextDatumFn) -> Iterator[tuple[WorkerServer, int]]:
    """A started server on a free loopback port, stopped however the test ends."""
    server = WorkerServer(callback)
    try:
        yield server, server.start()
    finally:
        server.stop()


@pytest.fixture
def served(worker: FakeWorker) -> Iterator[tuple[WorkerServer, int]]:
    with serving(worker) as served:
        yield served


@pytest.fixture
def server(served: tuple[WorkerServer, int]) -> WorkerServer:
    return served[0]


@pytest.fixture
def port(served: tuple[WorkerServer, int]) -> int:
    return served[1]


@pytest.fixture
def channel(port: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel


@pytest.fixture
def sdk_client(port: int, monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setenv("PPS_WORKER_GRPC_PORT", str(port))
    return Client()


def _raw_call(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(method)


def _own_call(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        PFSMOUNT_NEXT_DATUM,
        request_serializer=NextDatumRequest.encode,
        response_deserializer=NextDatumResponse.decode,
    )


def test_pachyderm_sdk_gets_the_env_and_reports_errors(
    sdk_client: Client, worker: FakeWorker
) -> None:
    first = sdk_client.worker.next_datum()
    second = sdk_client.worker.next_datum(error="ValueError('bad')")
    assert first.env == second.env == ["A=1", "B=two"]
    assert worker.calls == [("", False), ("ValueError('bad')", False)]


def test_pachyderm_method_never_answers_after_the_last_datum(
    sdk_client: Client, server: WorkerServer, worker: FakeWorker
) -> None:
    worker.reply = Reply(env=(), done=True)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(sdk_client.worker.next_datum)
        _wait_for(lambda: len(server._parked) == 1)
        time.sleep(0.3)
        assert not pending.done()
        server.stop()
        with pytest.raises(grpc.RpcError) as caught:
            pending.result(timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no more datums" in caught.value.details()


def test_parked_call_is_released_when_the_client_cancels(
    channel: grpc.Channel, server: WorkerServer, worker: FakeWorker
) -> None:
    worker.reply = Reply(env=(), done=True)
    pending: Future[bytes] = _raw_call(channel, PACHYDERM_NEXT_DATUM).future(b"")
    _wait_for(lambda: len(server._parked) == 1)
    pending.cancel()
    _wait_for(lambda: not server._parked)


def test_own_method_answers_done(channel: grpc.Channel, worker: FakeWorker) -> None:
    call = _own_call(channel)
    assert call(NextDatumRequest("oops")) == NextDatumResponse(
        env=("A=1", "B=two"), datum_id="datum-1"
    )
    worker.reply = Reply(env=(), done=True)
    assert call(NextDatumRequest()) == NextDatumResponse(done=True)
    assert worker.calls == [("oops", True), ("", True)]


@pytest.mark.parametrize("method", [PACHYDERM_NEXT_DATUM, PFSMOUNT_NEXT_DATUM])
def test_worker_gone_is_unavailable(channel: grpc.Channel, worker: FakeWorker, method: str) -> None:
    worker.reply = WorkerGone("job cancelled by SIGTERM")
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(channel, method)(b"")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "job cancelled by SIGTERM"


def test_a_failing_callback_is_internal(channel: grpc.Channel, worker: FakeWorker) -> None:
    worker.reply = RuntimeError("ledger is locked")
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(channel, PFSMOUNT_NEXT_DATUM)(b"")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "ledger is locked" in caught.value.details()


def test_malformed_request_is_invalid_argument(channel: grpc.Channel, worker: FakeWorker) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(channel, PACHYDERM_NEXT_DATUM)(b"\x0a\x05ab")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed NextDatumRequest" in caught.value.details()
    assert worker.calls == []


def test_status_and_cancel_are_unimplemented(sdk_client: Client) -> None:
    for call in (sdk_client.worker.status, lambda: sdk_client.worker.cancel(job_id="j")):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "pfsmount serves only NextDatum" in caught.value.details()


def test_concurrent_calls_are_served() -> None:
    inside = threading.Barrier(3, timeout=5)

    def rendezvous(error: str, own_client: bool) -> Reply:
        inside.wait()
        return Reply(env=(f"E={error}",))

    with serving(rendezvous) as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = _own_call(channel)
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda e: call(NextDatumRequest(e)), ["a", "b", "c"]))
    assert [r.env for r in results] == [("E=a",), ("E=b",), ("E=c",)]


def test_port_in_use_names_the_port_and_the_fix() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        server = WorkerServer(FakeWorker(Reply(env=())), port=busy)
        with pytest.raises(BindError) as caught:
            server.start()
        server.stop()
    assert isinstance(caught.value, OSError)
    assert f"127.0.0.1:{busy}" in str(caught.value)
    assert "--port" in str(caught.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "example.com", "10.0.0.1"])
def test_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        WorkerServer(FakeWorker(Reply(env=())), host=host)


def test_listens_on_loopback_only(port: int) -> None:
    outward = _non_loopback_address()
    if outward is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(OSError), socket.create_connection((outward, port), timeout=1):
        pass


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent for UDP connect
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def _wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)
