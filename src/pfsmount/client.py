"""pfsmount's Python client for user code: step through datums under ``pfsmount run``.

Three ways to use it, from most to least automatic::

    from pfsmount import batch_datums

    @batch_datums
    def process():                       # called once per datum, env already applied
        ...                              # an exception fails this datum; the loop goes on

    process()                            # returns the number of datums processed

    from pfsmount import iter_datums, reporting_errors

    for datum in iter_datums():               # applies datum.env to os.environ
        with reporting_errors():         # an exception fails this datum; the loop goes on
            ...

    from pfsmount import next_datum

    datum = next_datum()                 # None when there are no more datums
    while datum is not None:
        ...
        datum = next_datum(error="" if ok else "what went wrong")

``report_error(exc)`` marks the current datum failed by hand; the error is sent when the next
datum is requested. Unlike Pachyderm's clients, these return cleanly when datums run out
instead of being killed, so code after the loop runs (pfsmount still ends the process if it
lingers).

This module imports only grpc (and pfsmount's wire codec) so user programs start fast.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ParamSpec

from pfsmount.wire import (
    LOCAL_SOCKET_ENV,
    LocalCallError,
    LocalWorker,
    NextDatumRequest,
    NextDatumResponse,
)

logger = logging.getLogger(__name__)

PORT_ENV = "PPS_WORKER_GRPC_PORT"

P = ParamSpec("P")


class ClientError(Exception):
    """pfsmount's worker could not be reached or refused the call."""


@dataclass(frozen=True)
class Datum:
    """One datum as the worker announced it: its id and its environment."""

    id: str
    env: Mapping[str, str] = field(hash=False)


class _Session:
    """The process-wide connection to the worker, and which datum is current."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.port: int | None = None
        self.channel: Any = None
        self.call: Any = None
        self.local: LocalWorker | None = None
        self.pending_error = ""
        self.has_datum = False
        self.applied_keys: frozenset[str] = frozenset()

    def next_datum(self, error: str) -> NextDatumResponse:
        """One call, over pfsmount's local socket when it offers one, else over gRPC."""
        path = os.environ.get(LOCAL_SOCKET_ENV)
        if path:
            if self.local is None or self.local.path != path:
                self.local = LocalWorker(path)
            try:
                return self.local.next_datum(error)
            except LocalCallError as exc:
                raise ClientError(f"NextDatum failed: {exc}; is `pfsmount run` still "
                                  "running?") from None
        return self._grpc_next_datum(error)

    def _grpc_next_datum(self, error: str) -> NextDatumResponse:
        # grpc is imported only when needed: it doubles a short program's start-up time.
        import grpc

        from pfsmount.protocol import PFSMOUNT_NEXT_DATUM

        port = worker_port()
        if self.call is None or port != self.port:
            if self.channel is not None:
                self.channel.close()
            self.port = port
            self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            self.call = self.channel.unary_unary(
                PFSMOUNT_NEXT_DATUM,
                request_serializer=NextDatumRequest.encode,
                response_deserializer=NextDatumResponse.decode,
            )
        try:
            return self.call(NextDatumRequest(error=error))
        except grpc.RpcError as exc:
            raise ClientError(_describe(exc, port)) from None


_session = _Session()


def worker_port() -> int:
    """The worker's port from ``PPS_WORKER_GRPC_PORT``, or a ClientError saying what to do."""
    raw = os.environ.get(PORT_ENV)
    if raw is None:
        raise ClientError(f"{PORT_ENV} is not set: run this program under `pfsmount run`")
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ClientError(
            f"{PORT_ENV}={raw!r} is not a TCP port: run this program under `pfsmount run`, "
            "which sets it"
        )
    return port


def next_datum(error: str = "") -> Datum | None:
    """Finish the current datum and block until the next one is ready.

    ``error`` non-empty marks the current datum failed; if it is empty, an error recorded with
    ``report_error`` is sent instead. Returns None when there are no more datums. The first
    call only says "ready". There is no deadline: setting up a datum may take long.
    """
    with _session.lock:
        response = _session.next_datum(error or _session.pending_error)
        _session.pending_error = ""
        _session.has_datum = not response.done
    if response.done:
        return None
    return Datum(id=response.datum_id, env=MappingProxyType(_parse_env(response.env)))


def report_error(error: BaseException | str) -> None:
    """Mark the current datum failed; the error goes to the worker with the next request.

    An exception is reported as its ``repr()``, like pachyderm-sdk does.
    """
    message = error if isinstance(error, str) else repr(error)
    if not message:
        raise ValueError("report_error() needs a non-empty message or an exception")
    with _session.lock:
        if not _session.has_datum:
            raise ClientError(
                "no datum is current, so there is nothing to fail: call report_error() "
                "between next_datum() and the next call, or inside an iter_datums() loop"
            )
        _session.pending_error = message


@contextlib.contextmanager
def reporting_errors() -> Iterator[None]:
    """Catch an ``Exception`` in the block: print its traceback and fail the current datum.

    The exception is suppressed so the datum loop carries on; KeyboardInterrupt and
    SystemExit are not Exceptions and still end the program.
    """
    try:
        yield
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        report_error(exc)


def iter_datums() -> Iterator[Datum]:
    """Yield each datum after applying its env to ``os.environ``.

    Keys the previous datum set that this one lacks are removed. Fail a datum with
    ``report_error(exc)`` or by running the body inside ``with reporting_errors():``.
    """
    while (datum := next_datum()) is not None:
        apply_env(datum.env)
        yield datum


def batch_datums(fn: Callable[P, object]) -> Callable[P, int]:
    """Decorate ``fn`` to run once per datum, with the datum's env applied to ``os.environ``.

    An ``Exception`` raised by ``fn`` is printed (traceback to stderr) and reported as the
    datum's error (its ``repr()``); the loop carries on with the next datum. The decorated
    function returns the number of datums processed (failed ones included) when the datums
    run out.
    """

    @functools.wraps(fn)
    def run_per_datum(*args: P.args, **kwargs: P.kwargs) -> int:
        count = 0
        for _ in iter_datums():
            count += 1
            with reporting_errors():
                fn(*args, **kwargs)
        return count

    return run_per_datum


def apply_env(env: Mapping[str, str]) -> None:
    """Set ``env`` in ``os.environ``, removing keys the previously applied env set."""
    with _session.lock:
        stale = _session.applied_keys - env.keys()
        _session.applied_keys = frozenset(env)
    for key in stale:
        os.environ.pop(key, None)
    environ = os.environ
    for key, value in env.items():
        # Most of a datum's env is the unchanged process env; each assignment is a putenv.
        if environ.get(key) != value:
            environ[key] = value


def _parse_env(items: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            logger.warning("ignoring malformed env entry from the worker: %r", item)
            continue
        env[key] = value
    return env


def _describe(exc: Any, port: int) -> str:
    import grpc

    where = f"pfsmount worker at 127.0.0.1:{port} ({PORT_ENV})"
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"{where} is unavailable: {details}; is `pfsmount run` still running?"
    name = code.name if code is not None else "error"
    return f"{where} answered NextDatum with {name}: {details}"
