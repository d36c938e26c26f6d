"""Command-line clients for shell user code: ``pfsmount next-datum`` and ``pachctl next datum``.

Shell loops run one of these per datum (``while pachctl next datum; do ...; done``), so they
import as little as possible: pfsmount's wire codec (grpc only when pfsmount's local socket is
not offered), nothing that pulls in trio, pyfuse3 or yaml. Like Pachyderm's, they print
nothing on success: shell code reads the datum's env from ``/pfs/.env``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time
from typing import Any, NoReturn

from pfsmount import __version__
from pfsmount.wire import (
    ASK_PACHYDERM,
    LOCAL_SOCKET_ENV,
    LocalCallError,
    LocalWorker,
    NextDatumRequest,
    NextDatumResponse,
)

PORT_ENV = "PPS_WORKER_GRPC_PORT"

# The compiled `pachctl next datum` (native/pachctl.c), built into the environment pfsmount is
# installed in by scripts/setup. A shell loop pays a Python start-up per datum without it.
NATIVE_PACHCTL = os.path.join(sys.prefix, "libexec", "pfsmount", "pachctl")
# What the compiled shim runs, from its own directory, for anything but `next datum`.
PYTHON_PACHCTL = ".pachctl-python"

# pachctl gives up dialling the worker after 5 s; a module attribute so tests can shorten it.
PACHCTL_CONNECT_TIMEOUT = 5.0
_DIAL_RETRY_INTERVAL = 0.1

EXIT_READY = 0
EXIT_ERROR = 1
EXIT_NO_MORE_DATUMS = 3

# What pipelines call at start-up to reach their cluster. There is no cluster under pfsmount,
# and nothing these do changes what the pipeline computes, so they succeed and say so.
# Keys are the leading words of the command; () means "any subcommand".
IGNORED_COMMANDS: dict[str, tuple[str, ...]] = {
    "connect": (),
    "config": (),
    "auth": ("whoami", "login"),
}
_GLOBAL_FLAGS = frozenset({"-v", "--verbose", "--no-color"})

_PACHCTL_ONLY = (
    "pfsmount's pachctl shim only supports `pachctl next datum` (optionally --error MSG), "
    "not `pachctl {command}`: {fix}"
)
_FIXES = {
    "put": "write the file under /pfs/out instead (it becomes the output repo's content)",
    "get": "read the input under /pfs/<input name> instead",
    "list": "list the input under /pfs/<input name> instead",
    "glob": "list the input under /pfs/<input name> instead",
    "inspect": "look at the input under /pfs/<input name> instead",
}
_CLUSTER_FIX = "that needs a Pachyderm cluster; run it with the real pachctl against one"


class _UsageError(Exception):
    """Bad command-line arguments; the message says which."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting with status 2 on bad arguments."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def write_pachctl(bin_dir: str, native: str | None = None) -> bool:
    """Put `pachctl` in `bin_dir`: the compiled shim when it is built, else the Python one.

    The Python shim goes there either way, as `.pachctl-python`: the compiled one hands it every
    command but `next datum`. Returns whether the compiled shim was installed.
    """
    native = NATIVE_PACHCTL if native is None else native
    script = f'#!/bin/sh\nexec "{sys.executable}" -m pfsmount.pachctl "$@"\n'
    python_shim = os.path.join(bin_dir, PYTHON_PACHCTL)
    with open(python_shim, "w", encoding="utf-8") as f:
        f.write(script)
    os.chmod(python_shim, 0o755)
    target = os.path.join(bin_dir, "pachctl")
    # Copied, not linked: it finds `.pachctl-python` next to itself through /proc/self/exe.
    if os.access(native, os.X_OK):
        shutil.copyfile(native, target)
    else:
        shutil.copyfile(python_shim, target)
    os.chmod(target, 0o755)
    return os.access(native, os.X_OK)


def next_datum_main(argv: list[str]) -> int:
    """``pfsmount next-datum [--error MSG]``: 0 ready, 3 no more datums, 1 on any error."""
    prog = "pfsmount next-datum"
    parser = _Parser(
        prog=prog,
        description="Finish the current datum and wait until the next one is ready in /pfs. "
        "Exits 0 when it is, 3 when there are no more datums, 1 on error.",
    )
    parser.add_argument(
        "--error", default="", metavar="MSG", help="mark the current datum failed with MSG"
    )
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _fail(prog, str(exc))
    except SystemExit as exc:
        return _exit_code(exc)

    # Imported here, not at the top: pachctl_main does not need the client's machinery.
    from pfsmount.client import ClientError, next_datum

    try:
        datum = next_datum(error=args.error)
    except ClientError as exc:
        return _fail(prog, str(exc))
    return EXIT_READY if datum is not None else EXIT_NO_MORE_DATUMS


def pachctl_main(argv: list[str]) -> int:
    """``pachctl next datum [--error MSG]`` with Pachyderm's behaviour: 0 ready, 1 on error.

    After the last datum the call never returns, as with Pachyderm: the worker ends the
    process. The start-up commands in `IGNORED_COMMANDS` succeed and do nothing.
    """
    words = _command_words(argv)
    if words[:1] == ["version"]:
        print(f"pachctl shim from pfsmount {__version__} (supports only `pachctl next datum`)")
        return EXIT_READY
    ignored = _ignored_command(words)
    if ignored:
        # Only the command words: arguments may hold a token or a password.
        print(f"pachctl: pfsmount's shim ignored `pachctl {ignored}` (there is no Pachyderm "
              "cluster under pfsmount; only `pachctl next datum` does something)",
              file=sys.stderr)
        return EXIT_READY
    if words and words[:2] != ["next", "datum"]:
        # Refused before argparse, which would trip over the other command's own flags.
        return _fail("pachctl", _refusal(words[:2]))
    try:
        command, error = _parse_pachctl(argv)
    except _UsageError as exc:
        return _fail("pachctl", str(exc))
    except SystemExit as exc:
        return _exit_code(exc)
    if command != ["next", "datum"]:
        return _fail("pachctl", _refusal(command))
    try:
        _pachyderm_next_datum(error)
    except _ShimError as exc:
        return _fail("pachctl", str(exc))
    except KeyboardInterrupt:
        return 130
    return EXIT_READY


def _command_words(argv: list[str]) -> list[str]:
    """The leading words that name the command ("put", "file", ...), past global flags."""
    words: list[str] = []
    for arg in argv:
        if arg in _GLOBAL_FLAGS:
            continue
        if arg.startswith("-"):
            break
        words.append(arg)
    return words


def _refusal(command: list[str]) -> str:
    fix = _FIXES.get(command[0], _CLUSTER_FIX) if command[1:2] == ["file"] else _CLUSTER_FIX
    return _PACHCTL_ONLY.format(command=" ".join(command), fix=fix)


def _ignored_command(words: list[str]) -> str:
    """The command words of an ignored start-up command ("auth whoami"), or ""."""
    if not words or words[0] not in IGNORED_COMMANDS:
        return ""
    subcommands = IGNORED_COMMANDS[words[0]]
    if not subcommands:
        return words[0]
    if len(words) > 1 and words[1] in subcommands:
        return f"{words[0]} {words[1]}"
    return ""


class _ShimError(Exception):
    """The worker could not be reached or refused the call; the message is for people."""


def _parse_pachctl(argv: list[str]) -> tuple[list[str], str]:
    parser = _Parser(
        prog="pachctl",
        description="pfsmount's stand-in for `pachctl next datum`: finish the current datum "
        "and wait until the next one is ready in /pfs.",
    )
    parser.add_argument("command", nargs="*", help="`next datum` (or `version`)")
    parser.add_argument(
        "--error", default="", metavar="MSG", help="mark the current datum failed with MSG"
    )
    # Real pachctl's global flags: accepted so scripts that pass them keep working.
    parser.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-color", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    if not args.command:
        raise _UsageError("no command given: use `pachctl next datum [--error MSG]`")
    return args.command, args.error


def _pachyderm_next_datum(error: str) -> None:
    """Call Pachyderm's NextDatum the way pachctl does: 127.0.0.1, 5 s dial, no deadline.

    Under `pfsmount run` the same call goes over pfsmount's local socket instead, with the
    same meaning (no answer after the last datum); it saves the shell loop grpc's start-up.
    """
    path = os.environ.get(LOCAL_SOCKET_ENV)
    if path:
        worker = LocalWorker(path)
        try:
            worker.next_datum(error, kind=ASK_PACHYDERM)
        except LocalCallError as exc:
            raise _ShimError(f"NextDatum failed: {exc}") from None
        finally:
            worker.close()
        return
    import grpc

    from pfsmount.protocol import PACHYDERM_NEXT_DATUM

    port = _worker_port()
    address = f"127.0.0.1:{port}"
    _wait_until_listening(port, PACHCTL_CONNECT_TIMEOUT)
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            PACHYDERM_NEXT_DATUM,
            request_serializer=NextDatumRequest.encode,
            response_deserializer=NextDatumResponse.decode,
        )
        try:
            call(NextDatumRequest(error=error))
        except grpc.RpcError as exc:
            raise _ShimError(f"NextDatum at {address} failed: {_rpc_details(exc)}") from None


def _wait_until_listening(port: int, timeout: float) -> None:
    """Retry a TCP connect to the worker until it accepts or ``timeout`` seconds pass.

    This is pachctl's 5 s dial timeout. grpc.channel_ready_future would do it too, but closing
    a channel it watched joins grpc's polling thread, which costs 200 ms on every datum.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=max(remaining, 0.01)).close()
            return
        except OSError as exc:
            if remaining <= 0:
                raise _ShimError(
                    f"could not connect to the pfsmount worker at 127.0.0.1:{port} "
                    f"({PORT_ENV}) within {timeout:g} s ({exc.strerror or exc}): "
                    "is `pfsmount run` still running?"
                ) from None
        time.sleep(min(_DIAL_RETRY_INTERVAL, max(remaining, 0)))


def _worker_port() -> int:
    raw = os.environ.get(PORT_ENV)
    if raw is None:
        raise _ShimError(f"{PORT_ENV} is not set: run this program under `pfsmount run`")
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise _ShimError(f"{PORT_ENV}={raw!r} is not a TCP port: `pfsmount run` sets it")
    return int(raw)


def _rpc_details(exc: Any) -> str:
    import grpc

    if isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return EXIT_ERROR


def _exit_code(exc: SystemExit) -> int:
    """argparse exits for --help; turn that into a return value."""
    code = exc.code
    if code is None:
        return EXIT_READY
    return code if isinstance(code, int) else EXIT_ERROR
