"""Gets pyfuse3's main loop out of a read of /dev/fuse that the kernel left with nothing to read.

pyfuse3 waits in trio until /dev/fuse is readable, then reads it with a *blocking* read, holding
the GIL. If the process whose request made it readable gets a fatal signal before that read
(user code being stopped in the middle of a request, as at the end of every job), the kernel
withdraws the request, and the read blocks the trio thread -- and with the GIL every thread of
pfsmount -- until some other request comes. After the user code is gone none comes: pfsmount
hung for good. So a small process of its own (no GIL shared) watches the trio thread; blocked
in that read for two looks in a row, pfsmount is sent a signal whose empty handler makes the
read fail with EINTR, and pyfuse3 goes back to waiting in trio.

Run as `python -S fusewake.py PID TID LIFELINE_FD` it is that watcher: standard library only,
and it ends when the lifeline pipe (see usercode.lifeline) says pfsmount is gone.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
from types import FrameType

log = logging.getLogger(__name__)

WAKE_SIGNAL = signal.SIGUSR2
LOOK_EVERY = 0.25  # seconds; a read that has data returns within microseconds
_IN_FUSE_READ = b"fuse_dev_do_read"  # the kernel function such a read waits in (its wchan)


def _interrupt_only(signum: int, frame: FrameType | None) -> None:
    """Installed without SA_RESTART (Python's way), so a blocked read returns EINTR."""


class FuseReadWatchdog:
    """Watches the calling thread (the trio thread that runs pyfuse3) until `close`.

    Inert off the main thread, where Python installs no signal handlers.
    """

    def __init__(self, lifeline: int) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(WAKE_SIGNAL, _interrupt_only)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-S", __file__, str(os.getpid()),
                 str(threading.get_native_id()), str(lifeline)],
                pass_fds=(lifeline,), stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            log.warning("cannot start the watcher of pyfuse3's reads (%s); a request withdrawn "
                        "at the wrong moment may leave pfsmount waiting", exc)
            signal.signal(WAKE_SIGNAL, self._previous)

    def close(self) -> None:
        """Stop watching and put the signal's previous handler back."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        self._proc = None
        signal.signal(WAKE_SIGNAL, self._previous)


def watch(pid: int, tid: int, lifeline: int, look_every: float = LOOK_EVERY) -> int:
    """The watcher's loop: until pfsmount is gone (EOF on `lifeline`) or cannot be watched."""
    gone = select.poll()
    gone.register(lifeline, select.POLLIN)
    wchan = f"/proc/{pid}/task/{tid}/wchan"
    looks = 0
    while not gone.poll(int(look_every * 1000)):
        try:
            with open(wchan, "rb") as f:
                waiting_in = f.read().strip()
        except OSError:
            return 0  # pfsmount is gone
        looks = looks + 1 if waiting_in == _IN_FUSE_READ else 0
        if looks >= 2:
            looks = 0
            try:
                os.kill(pid, WAKE_SIGNAL)  # the main thread, blocked and not blocking it
            except ProcessLookupError:
                return 0
    return 0


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
