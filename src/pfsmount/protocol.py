"""The worker's gRPC endpoint: Pachyderm's NextDatum protocol and pfsmount's richer variant.

Two services share one server on loopback:

- ``/pachyderm.worker.Worker/NextDatum`` speaks Pachyderm's wire format exactly, so the
  unmodified pachyderm-sdk and ``pachctl next datum`` work. After the last datum it never
  answers, as Pachyderm never does: the worker ends the user process instead.
- ``/pfsmount.worker.Worker/NextDatum`` adds ``done`` and ``datum_id`` to the response, so
  pfsmount's own clients learn cleanly that the datums have run out.

The messages are three small proto3 messages, so they are encoded by hand here instead of
pulling in protoc and protobuf. This module must stay importable with grpc alone: the user-code
client (``pfsmount.client``) and the shell shims import it, and their startup time matters.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from pfsmount.peers import JobPeers, PeerRefused
from pfsmount.reply import NextDatumFn, Reply, WorkerGone, WorkerRefused  # also re-exported
from pfsmount.wire import DecodeError, NextDatumRequest, NextDatumResponse

logger = logging.getLogger(__name__)

PACHYDERM_SERVICE = "pachyderm.worker.Worker"
PFSMOUNT_SERVICE = "pfsmount.worker.Worker"
PACHYDERM_NEXT_DATUM = f"/{PACHYDERM_SERVICE}/NextDatum"
PFSMOUNT_NEXT_DATUM = f"/{PFSMOUNT_SERVICE}/NextDatum"

_UNIMPLEMENTED_MESSAGE = (
    "pfsmount serves only NextDatum on {service}; {method} is not available "
    "(call NextDatum, or use `pfsmount` itself to inspect the job)"
)


# How long stop() lets calls parked after the last datum deliver their UNAVAILABLE.
_PARKED_GRACE = 0.2


# --- the server ---------------------------------------------------------------------------


class BindError(OSError):
    """The server could not listen on the requested loopback port."""


class WorkerServer:
    """The gRPC server user code talks to: both NextDatum methods, on loopback only.

    Every call is checked against `peers` (by default: callers of this process's uid only);
    anyone else gets PERMISSION_DENIED.
    """

    def __init__(
        self,
        next_datum: NextDatumFn,
        port: int = 0,
        host: str = "127.0.0.1",
        max_workers: int = 16,
        peers: JobPeers | None = None,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(
                f"refusing to serve the worker protocol on {host!r}: it has no authentication, "
                "so pfsmount listens on loopback only (use 127.0.0.1 or ::1)"
            )
        self._next_datum = next_datum
        self._port = port
        self._peers = peers if peers is not None else JobPeers()
        self._host = host
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._stopping = False
        # Calls parked after the last datum, woken when the server stops.
        self._parked: set[threading.Event] = set()

    def start(self) -> int:
        """Bind and start serving; return the bound port."""
        if self._server is not None:
            raise RuntimeError("WorkerServer.start() was already called")
        self._executor = ThreadPoolExecutor(
            max_workers=self._max_workers, thread_name_prefix="pfsmount-grpc"
        )
        # grpc sets SO_REUSEPORT by default, which would let two servers share a port silently.
        server = grpc.server(self._executor, options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(self._handlers())
        port = self._bind(server, self._host, self._port)
        if self._host == "127.0.0.1":
            self._bind_ipv6_loopback(server, port)
        server.start()
        self._server = server
        self._port = port
        logger.info("worker protocol listening on %s:%d", self._host, port)
        return port

    def stop(self, grace: float | None = 0) -> None:
        """Stop serving: parked calls get UNAVAILABLE, then in-flight calls are cancelled.

        A callback still blocked in the worker keeps its gRPC thread until it returns, so the
        worker must make pending callbacks return (raise ``WorkerGone``) when it shuts down.
        """
        with self._lock:
            self._stopping = True
            parked = list(self._parked)
        for event in parked:
            event.set()
        if self._server is not None:
            if parked and not grace:
                # Woken parked calls need a moment to send UNAVAILABLE before cancellation wins.
                grace = _PARKED_GRACE
            self._server.stop(grace).wait()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # --- binding

    @staticmethod
    def _bind(server: grpc.Server, host: str, port: int) -> int:
        _check_bindable(host, port)
        address = _address(host, port)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise BindError(_bind_message(host, port, "gRPC could not bind it"))
        return bound

    @staticmethod
    def _bind_ipv6_loopback(server: grpc.Server, port: int) -> None:
        # pachyderm-sdk dials `localhost`, which may resolve to ::1 first; serve it there too
        # when this machine has IPv6, so no other process can answer in pfsmount's place.
        try:
            _check_bindable("::1", port)
            server.add_insecure_port(_address("::1", port))
        except BindError as exc:
            # No IPv6 is harmless (grpc falls back to 127.0.0.1); another server there is not.
            log = logger.warning if exc.errno == errno.EADDRINUSE else logger.debug
            log("not serving on [::1]:%d, so `localhost` clients may miss pfsmount: %s", port, exc)
        except RuntimeError as exc:
            logger.debug("not serving on [::1]:%d: %s", port, exc)

    # --- handlers

    def _handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        # No (de)serializers: requests arrive as bytes so a malformed one can be rejected
        # with INVALID_ARGUMENT and a useful message instead of grpc's bare INTERNAL.
        pachyderm = grpc.method_handlers_generic_handler(
            PACHYDERM_SERVICE,
            {
                "NextDatum": grpc.unary_unary_rpc_method_handler(self._pachyderm_next_datum),
                "Status": grpc.unary_unary_rpc_method_handler(_unimplemented("Status")),
                "Cancel": grpc.unary_unary_rpc_method_handler(_unimplemented("Cancel")),
            },
        )
        own = grpc.method_handlers_generic_handler(
            PFSMOUNT_SERVICE,
            {"NextDatum": grpc.unary_unary_rpc_method_handler(self._own_next_datum)},
        )
        return (pachyderm, own)

    def _own_next_datum(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        reply = self._call(request, context, own_client=True)
        return NextDatumResponse(reply.env, reply.done, reply.datum_id).encode()

    def _pachyderm_next_datum(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        reply = self._call(request, context, own_client=False)
        if reply.done:
            self._park(context)
        return NextDatumResponse(reply.env).encode()

    def _call(self, request: bytes, context: grpc.ServicerContext, own_client: bool) -> Reply:
        try:
            self._peers.check_tcp(context.peer(), self._port, self._host)
        except PeerRefused as exc:
            logger.warning("%s", exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        try:
            error = NextDatumRequest.decode(request).error
        except DecodeError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed NextDatumRequest: {exc}")
        try:
            return self._next_datum(error, own_client)
        except WorkerGone as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc) or "the pfsmount job is over")
        except WorkerRefused as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception as exc:
            logger.exception("NextDatum failed inside the worker")
            context.abort(grpc.StatusCode.INTERNAL, f"pfsmount worker failed: {exc!r}")

    def _park(self, context: grpc.ServicerContext) -> None:
        """Hold a Pachyderm client after the last datum until it goes away or we stop."""
        wake = threading.Event()
        if not context.add_callback(wake.set):
            # The RPC already ended, so the callback would never fire.
            wake.set()
        with self._registered(wake):
            wake.wait()
        if self._stopping:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "pfsmount is shutting down: there are no more datums",
            )
        context.abort(grpc.StatusCode.CANCELLED, "the client went away")

    @contextlib.contextmanager
    def _registered(self, wake: threading.Event) -> Iterator[None]:
        with self._lock:
            self._parked.add(wake)
            if self._stopping:
                wake.set()
        try:
            yield
        finally:
            with self._lock:
                self._parked.discard(wake)


def _unimplemented(method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            _UNIMPLEMENTED_MESSAGE.format(service=PACHYDERM_SERVICE, method=method),
        )

    return handler


def _is_loopback(host: str) -> bool:
    import ipaddress  # only the server needs it; clients import this module too

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_bindable(host: str, port: int) -> None:
    """Fail early, with the OS's reason, when the port cannot be bound.

    grpc only says "Failed to bind" (and logs noise to stderr); a plain socket says why.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Match grpc, which sets SO_REUSEADDR: a port in TIME_WAIT is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BindError(exc.errno, _bind_message(host, port, exc.strerror)) from exc


def _bind_message(host: str, port: int, reason: str | None) -> str:
    return (
        f"cannot listen on {_address(host, port)} for the worker protocol: {reason}; "
        "pick a free port with --port, or --port 0 to let the system choose one"
    )
