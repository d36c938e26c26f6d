"""Checks that refuse a run before anything is recorded or mounted.

Each one turns a mistake that would otherwise surface late (a traceback at the first commit,
three "crash loop" restarts, a job left "running") into one line naming the problem, the path
and the fix. They run before the job is entered in the ledger, so a refused run changes
nothing: no phantom job, and an interrupted job stays resumable.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping

from pfsmount.workspace import WORK_DIR


class StartError(Exception):
    """A run must not start; the message says why and what to do."""


def check_mountpoint_outside(mountpoint: str, data_dir: str, pipeline: str,
                             input_repos: Collection[str]) -> None:
    """Refuse a mountpoint inside the data directory.

    Output is committed by renaming staged files into the output repo, which cannot cross
    file systems (EXDEV), and a mount there would hide repo files or pfsmount's own state.
    """
    mnt = os.path.realpath(mountpoint)
    data = os.path.realpath(data_dir)
    if mnt != data and not mnt.startswith(data.rstrip("/") + "/"):
        return
    top = os.path.relpath(mnt, data).split("/")[0]
    if mnt == data:
        where = "itself the data directory"
    elif top == WORK_DIR:
        where = f"pfsmount's workspace {os.path.join(data, WORK_DIR)}"
    elif top == pipeline:
        where = f"the output repo {os.path.join(data, pipeline)}"
    elif top in input_repos:
        where = f"the input repo {os.path.join(data, top)}"
    else:
        where = f"the data directory {data}"
    raise StartError(f"mountpoint {mountpoint} is {where if mnt == data else 'inside ' + where}; "
                     "the mountpoint must be outside the data directory (choose another "
                     "--mountpoint, e.g. /pfs)")


def check_port(port: int) -> None:
    """Refuse a --port that is out of range or taken, before anything else happens."""
    if not 0 <= port <= 65535:
        raise StartError(f"--port {port} is not a TCP port; use 1-65535, or 0 to let the "
                         "system choose a free one")
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As grpc does: a port in TIME_WAIT is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise StartError(f"--port {port}: cannot listen on 127.0.0.1:{port} for the worker "
                             f"protocol: {exc.strerror}; pick a free port, or --port 0 to let "
                             "the system choose one") from None


def check_program(field: str, cmd: tuple[str, ...], env: Mapping[str, str], cwd: str,
                  shims: str = "") -> None:
    """Refuse a `cmd` whose program cannot be executed, as execvp would find it.

    A name without `/` is looked up on the user code's PATH (`env`, which holds pfsmount's
    shims, in the directory `shims`: left out of messages); a path with `/` is taken
    relative to `cwd`, the user code's working directory.
    """
    if not cmd:
        return
    program = cmd[0]
    if "/" in program:
        path = os.path.normpath(os.path.join(cwd, program))
        problem = _not_executable(path)
        if problem:
            shown = program if path == program else f"{program} ({path})"
            raise StartError(f"{field}: {shown} {problem}")
        return
    search = env.get("PATH", os.defpath).split(os.pathsep)
    found_but: str | None = None
    for entry in search:
        # An empty or relative PATH entry is relative to the user code's working directory.
        path = os.path.join(cwd, entry or ".", program)
        problem = _not_executable(path)
        if not problem:
            return
        if found_but is None and os.path.lexists(path):
            found_but = f"{path} {problem}"
    if found_but:
        raise StartError(f"{field}: '{program}' is found on PATH but cannot run: {found_but}")
    shown = os.pathsep.join(entry for entry in search if entry != shims)
    raise StartError(f"{field}: '{program}' is not found on the user code's PATH ({shown}); "
                     "install it, give its full path, or set PATH in transform.env")


def _not_executable(path: str) -> str:
    """Why execvp could not run `path` ("" when it can), in words for the message."""
    if not os.path.lexists(path):
        return "does not exist"
    if not os.path.exists(path):
        return f"is a broken symlink (to {os.readlink(path)})"
    if os.path.isdir(path):
        return "is a directory"
    if not os.access(path, os.X_OK):
        return f"is not executable (chmod +x {path}, or run it with its interpreter)"
    interpreter = _shebang(path)
    if interpreter and not os.access(interpreter, os.X_OK):
        return f"names an interpreter that cannot run: #!{interpreter}"
    return ""


def _shebang(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return ""
    if not head.startswith(b"#!"):
        return ""
    words = head[2:].split(b"\n", 1)[0].split()
    return os.fsdecode(words[0]) if words else ""
