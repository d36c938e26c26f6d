"""Starting, watching and stopping the user's program and its whole process group.

The program runs under `reaper.py`, which leads a process group of its own and takes the
group down if pfsmount dies without a chance to clean up: it watches a pipe whose write end
only this process holds (the "lifeline"), so pfsmount's death, however it happens, is EOF.
Its stdout and stderr come back through pipes, line by line, so pfsmount can show them
without tearing its progress line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from pfsmount.sandbox import NO_SANDBOX, REAPER, Sandbox

log = logging.getLogger(__name__)

LineSink = Callable[[str, bytes], None]  # (stream name, line without newline)


def describe_exit(code: int) -> str:
    """`exited with status 1` / `was killed by SIGKILL`, for messages."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass(eq=False)
class UserProcess:
    """A running user program (its reaper is the process group leader)."""

    process: trio.Process
    cmd: Sequence[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    async def stop(self, grace: float) -> None:
        """SIGTERM, up to `grace` seconds to exit, then SIGKILL for the whole group.

        In a PID namespace the reaper passes SIGTERM on to every process inside, and the
        SIGKILL of its group takes the namespace's init, so the namespace, with it.
        """
        pgid = self.process.pid
        if self.process.returncode is None:
            _signal(self.process.pid, signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.process.wait()
        # Stragglers in the group (children that outlived the program) go too.
        _killpg(pgid, signal.SIGKILL)
        if self.process.returncode is None:
            await self.process.wait()


_lifeline_fds: tuple[int, int] | None = None


def lifeline() -> int:
    """The read end of the pipe whose EOF tells every reaper that pfsmount is gone.

    The write end stays open, in this process only, until the process ends: `os.pipe` makes
    both ends close-on-exec, so no program pfsmount starts inherits it, and each reaper gets
    the read end explicitly.
    """
    global _lifeline_fds
    if _lifeline_fds is None:
        _lifeline_fds = os.pipe()
    return _lifeline_fds[0]


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def start(
    nursery: trio.Nursery,
    cmd: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    stdin_lines: Sequence[str],
    sink: LineSink,
    sandbox: Sandbox = NO_SANDBOX,
) -> UserProcess:
    """Start `cmd` in `sandbox`; its output is pumped to `sink` by tasks in `nursery`."""
    watch = lifeline()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-S", REAPER, "--lifeline", str(watch), *sandbox.reaper_args(),
         "--", *cmd],
        pass_fds=(watch,),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    data = ("\n".join(stdin_lines) + "\n").encode() if stdin_lines else b""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    nursery.start_soon(_feed, proc.stdin, data)
    nursery.start_soon(_pump, proc.stdout, "stdout", sink)
    nursery.start_soon(_pump, proc.stderr, "stderr", sink)
    log.debug("started user code pid %d: %s", proc.pid, cmd)
    return UserProcess(proc, cmd)


async def _feed(stream: trio.abc.SendStream, data: bytes) -> None:
    try:
        if data:
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the program exited or closed stdin without reading it all
    finally:
        await stream.aclose()


async def _pump(stream: trio.abc.ReceiveStream, name: str, sink: LineSink) -> None:
    pending = b""
    try:
        async for chunk in stream:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                sink(name, line)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    if pending:
        sink(name, pending)
