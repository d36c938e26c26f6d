"""The NextDatum messages on the wire, and the local socket pfsmount's own clients use.

The messages are three small proto3 messages, encoded by hand so that nothing here needs
protobuf or grpc: user programs and the shell shims import this module, and their start-up
time is paid once per datum in a shell loop.

pfsmount's own clients (the Python client, `pfsmount next-datum` and pfsmount's `pachctl`)
reach the worker over a Unix socket named by `PFSMOUNT_WORKER_SOCKET` when it is set: a call
is one frame each way, with no HTTP/2 and no gRPC threads in between. A frame is a 4-byte
big-endian length, one kind byte, then the protobuf-encoded message. Pachyderm's own clients
keep using gRPC on `PPS_WORKER_GRPC_PORT`.

Strings are names and environment values, and those are bytes (`names.py`): on the local
socket (`exact=True`) they travel as their exact bytes, which need not be UTF-8. On gRPC a
proto3 `string` must be valid UTF-8 (Pachyderm's Go and Python clients reject anything else),
so there each byte that is not UTF-8 is sent as U+FFFD, and received strings must be UTF-8.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

LOCAL_SOCKET_ENV = "PFSMOUNT_WORKER_SOCKET"

# Request kinds: whose protocol the caller speaks.
ASK_PFSMOUNT = 0  # answered with "done" after the last datum
ASK_PACHYDERM = 1  # never answered after the last datum, as Pachyderm does
# Reply kinds.
REPLY_OK = 0
REPLY_GONE = 1  # the job is over or this process is being stopped
REPLY_REFUSED = 2  # e.g. "datum batching not enabled"

_FRAME_HEADER = struct.Struct(">IB")
MAX_FRAME = 16 * 1024 * 1024


class LocalCallError(Exception):
    """The worker's local socket failed or answered with an error; str() says which."""


_VARINT = 0
_FIXED64 = 1
_LENGTH_DELIMITED = 2
_START_GROUP = 3
_END_GROUP = 4
_FIXED32 = 5

# A 64-bit varint never needs more than ten bytes; anything longer is corrupt, not big.
_MAX_VARINT_BYTES = 10


class DecodeError(ValueError):
    """A message on the wire is not valid protobuf for the expected type."""


def _encode_varint(value: int) -> bytes:
    if value < 0:
        # proto3 int32/int64 encode negatives as their 64-bit two's complement.
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_tag(field: int, wire_type: int) -> bytes:
    return _encode_varint(field << 3 | wire_type)


def _utf8(value: str, exact: bool) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        pass  # undecodable bytes as surrogate escapes: rare, so handled off the common path
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        exact, data = False, value.encode("utf-8", "surrogatepass")  # not from the OS
    return data if exact else data.decode("utf-8", "replace").encode("utf-8")


def _encode_string(field: int, value: str, exact: bool = False) -> bytes:
    data = _utf8(value, exact)
    return _encode_tag(field, _LENGTH_DELIMITED) + _encode_varint(len(data)) + data


def _encode_bool(field: int, value: bool) -> bytes:
    return _encode_tag(field, _VARINT) + _encode_varint(int(value))


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read one varint at ``pos``; return it and the position after it."""
    result = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise DecodeError(f"truncated varint at byte {pos}")
        byte = data[pos + i]
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return result & ((1 << 64) - 1), pos + i + 1
    raise DecodeError(f"varint longer than {_MAX_VARINT_BYTES} bytes at byte {pos}")


def _take(data: bytes, pos: int, size: int, what: str) -> tuple[bytes, int]:
    end = pos + size
    if end > len(data):
        raise DecodeError(
            f"truncated {what} at byte {pos}: needs {size} bytes, {len(data) - pos} left"
        )
    return data[pos:end], end


@dataclass(frozen=True)
class _Field:
    """One decoded field: its number, wire type and raw value (an int or the bytes)."""

    number: int
    wire_type: int
    value: int | bytes


def _read_field(data: bytes, pos: int) -> tuple[_Field, int]:
    key, pos = _decode_varint(data, pos)
    number, wire_type = key >> 3, key & 7
    if number == 0:
        raise DecodeError(f"field number 0 at byte {pos} is invalid")
    if wire_type == _VARINT:
        value, pos = _decode_varint(data, pos)
        return _Field(number, wire_type, value), pos
    if wire_type == _LENGTH_DELIMITED:
        size, pos = _decode_varint(data, pos)
        raw, pos = _take(data, pos, size, f"field {number}")
        return _Field(number, wire_type, raw), pos
    if wire_type == _FIXED64:
        raw, pos = _take(data, pos, 8, f"fixed64 field {number}")
        return _Field(number, wire_type, raw), pos
    if wire_type == _FIXED32:
        raw, pos = _take(data, pos, 4, f"fixed32 field {number}")
        return _Field(number, wire_type, raw), pos
    if wire_type == _START_GROUP:
        return _Field(number, wire_type, b""), _skip_group(data, pos, number)
    if wire_type == _END_GROUP:
        raise DecodeError(f"unexpected end of group {number} at byte {pos}")
    raise DecodeError(f"invalid wire type {wire_type} for field {number}")


def _skip_group(data: bytes, pos: int, number: int) -> int:
    """Skip a (deprecated) group's fields up to its matching end tag."""
    while pos < len(data):
        key, after_key = _decode_varint(data, pos)
        if key & 7 == _END_GROUP:
            if key >> 3 != number:
                raise DecodeError(f"group {number} closed by end of group {key >> 3}")
            return after_key
        _, pos = _read_field(data, pos)
    raise DecodeError(f"group {number} is never closed")


def _fields(data: bytes) -> Iterator[_Field]:
    pos = 0
    while pos < len(data):
        field, pos = _read_field(data, pos)
        yield field


def _as_string(field: _Field, exact: bool = False) -> str:
    assert isinstance(field.value, bytes)
    if exact:
        return field.value.decode("utf-8", "surrogateescape")
    try:
        return field.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"field {field.number} is not valid UTF-8: {exc}") from None


@dataclass(frozen=True)
class NextDatumRequest:
    """``NextDatumRequest { string error = 1; }``, the same in both services."""

    error: str = ""

    def encode(self, exact: bool = False) -> bytes:
        return _encode_string(1, self.error, exact) if self.error else b""

    @classmethod
    def decode(cls, data: bytes, exact: bool = False) -> NextDatumRequest:
        error = ""
        for field in _fields(data):
            # A known field with another wire type is kept as unknown, as protobuf-go does.
            if field.number == 1 and field.wire_type == _LENGTH_DELIMITED:
                error = _as_string(field, exact)
        return cls(error=error)


@dataclass(frozen=True)
class NextDatumResponse:
    """pfsmount's ``{ repeated string env = 1; bool done = 2; string datum_id = 3; }``.

    With ``done`` false and no ``datum_id`` it encodes to exactly Pachyderm's
    ``NextDatumResponse { repeated string env = 1; }``.
    """

    env: tuple[str, ...] = ()
    done: bool = False
    datum_id: str = ""

    def encode(self, exact: bool = False) -> bytes:
        parts = [_encode_string(1, item, exact) for item in self.env]
        if self.done:
            parts.append(_encode_bool(2, True))
        if self.datum_id:
            parts.append(_encode_string(3, self.datum_id))
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes, exact: bool = False) -> NextDatumResponse:
        env: list[str] = []
        done = False
        datum_id = ""
        for field in _fields(data):
            if field.number == 1 and field.wire_type == _LENGTH_DELIMITED:
                env.append(_as_string(field, exact))
            elif field.number == 2 and field.wire_type == _VARINT:
                done = field.value != 0
            elif field.number == 3 and field.wire_type == _LENGTH_DELIMITED:
                datum_id = _as_string(field)
        return cls(env=tuple(env), done=done, datum_id=datum_id)


# --- the local socket ----------------------------------------------------------------------


def frame(kind: int, payload: bytes) -> bytes:
    return _FRAME_HEADER.pack(len(payload) + 1, kind) + payload


def unframe_header(header: bytes) -> tuple[int, int]:
    """(payload length, kind) from a frame's first five bytes."""
    length, kind = _FRAME_HEADER.unpack(header)
    if not 1 <= length <= MAX_FRAME:
        raise DecodeError(f"frame of {length} bytes is not valid")
    return length - 1, kind


class LocalWorker:
    """A connection to the worker's local socket; one call at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def next_datum(self, error: str, kind: int = ASK_PFSMOUNT) -> NextDatumResponse:
        """One NextDatum call; blocks until the worker answers (no deadline)."""
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(self.path)
                self._sock = sock
            self._sock.sendall(frame(kind, NextDatumRequest(error=error).encode(exact=True)))
            length, reply = unframe_header(self._recv(_FRAME_HEADER.size))
            payload = self._recv(length)
        except (OSError, DecodeError) as exc:
            self.close()
            raise LocalCallError(f"pfsmount's worker socket {self.path}: {exc}") from None
        if reply != REPLY_OK:
            raise LocalCallError(payload.decode(errors="replace"))
        return NextDatumResponse.decode(payload, exact=True)

    def _recv(self, n: int) -> bytes:
        assert self._sock is not None
        chunks = []
        while n:
            chunk = self._sock.recv(n)
            if not chunk:
                raise ConnectionResetError("the worker closed the connection (the job is over)")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)
