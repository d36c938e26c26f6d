"""Process-group leader that guarantees user code dies with pfsmount.

pfsmount starts user code as `python -S reaper.py CMD...`. This process leads the user
code's process group, asks the kernel to signal it when pfsmount dies (even by SIGKILL,
which pfsmount itself cannot catch), and then kills the whole group at once: with /pfs gone,
a program that lived on could write into the bare mountpoint directory. When pfsmount stops
it in an orderly way (SIGTERM), the group gets SIGTERM, a grace period, then SIGKILL.
Otherwise the reaper just waits for CMD and exits with CMD's status. It is run
without `site` and imports only the standard library so it starts in milliseconds.
"""

import contextlib
import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# The parent-death signal: a real-time one, which no program sends to its group by habit.
ORPHANED = signal.SIGRTMIN + 3
GRACE_SECONDS = float(os.environ.get("PFSMOUNT_REAPER_GRACE", "5"))


def _stop_group(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)


def _orphaned(signum, frame):
    # pfsmount is gone and so is /pfs: every moment the program lives on it may write into
    # the bare mountpoint directory. No grace period.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGKILL)


def main(argv):
    if not argv:
        sys.stderr.write("usage: reaper.py CMD [ARG...]\n")
        return 2
    parent = os.getppid()
    # The running process's own symbols include libc's; find_library would cost ~15 ms of
    # start-up, paid for every datum without batching.
    libc = ctypes.CDLL(None, use_errno=True)
    signal.signal(ORPHANED, _orphaned)
    libc.prctl(PR_SET_PDEATHSIG, ORPHANED, 0, 0, 0)
    # Orphaned grandchildren come to us instead of init, so they stay in reach.
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGTERM, _stop_group)
    if os.getppid() != parent:
        # pfsmount died before the death signal was armed.
        _orphaned(ORPHANED, None)
    try:
        pid = os.fork()
    except OSError as exc:
        sys.stderr.write(f"pfsmount: cannot start user code: {exc}\n")
        return 127
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            sys.stderr.write(f"pfsmount: cannot run {argv[0]!r}: {exc.strerror}\n")
            os._exit(127)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code < 0:
        # Mirror death by signal so pfsmount sees the same status as without us.
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)
