"""Process-group leader that guarantees user code dies with pfsmount.

pfsmount starts user code as `python -S reaper.py --lifeline FD -- CMD...`. This process
leads the user code's process group and watches two things at once: CMD (through a pidfd)
and the read end FD of a pipe whose write end only pfsmount holds. The pipe reaches EOF when
the pfsmount *process* is gone, however it died (even by SIGKILL, which it cannot catch), and
then the whole group is killed at once: with /pfs gone, a program that lived on could write
into the bare mountpoint directory. (The kernel's parent-death signal is no substitute: it
fires when the *thread* that forked us exits, and pfsmount starts us from a worker thread
that trio retires after 10 s idle.)

When pfsmount stops it in an orderly way (SIGTERM), the group gets SIGTERM, a grace period,
then SIGKILL. Otherwise the reaper waits for CMD and exits with CMD's status. It is run
without `site` and imports only the standard library so it starts in milliseconds.
"""

import contextlib
import ctypes
import os
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = float(os.environ.get("PFSMOUNT_REAPER_GRACE", "5"))
USAGE = "usage: reaper.py --lifeline FD -- CMD [ARG...]\n"

_lifeline = -1  # read end of pfsmount's pipe: EOF means pfsmount is gone


def _pfsmount_gone() -> bool:
    return bool(select.select([_lifeline], [], [], 0)[0])


def _stop_group(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline and not _pfsmount_gone():
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)


def _orphaned():
    # pfsmount is gone and so is /pfs: every moment the program lives on it may write into
    # the bare mountpoint directory. No grace period.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGKILL)


def _parse(argv):
    """(lifeline fd, cmd) from `--lifeline FD -- CMD...`, or None when malformed."""
    if len(argv) < 4 or argv[0] != "--lifeline" or argv[2] != "--":
        return None
    try:
        return int(argv[1]), argv[3:]
    except ValueError:
        return None


def _exec(argv):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Python ignores these for itself; a program must start with the defaults (`yes | head`).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"pfsmount: cannot run {argv[0]!r}: {exc.strerror}\n")
        os._exit(127)


def main(argv):
    global _lifeline
    parsed = _parse(argv)
    if parsed is None:
        sys.stderr.write(USAGE)
        return 2
    _lifeline, cmd = parsed
    # The user's program must not hold the pipe (it would not keep pfsmount "alive", but it
    # has no business with it either).
    os.set_inheritable(_lifeline, False)
    # The running process's own symbols include libc's; find_library would cost ~15 ms of
    # start-up, paid for every datum without batching.
    libc = ctypes.CDLL(None, use_errno=True)
    # Orphaned grandchildren come to us instead of init, so they stay in reach.
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGTERM, _stop_group)
    try:
        pid = os.fork()
    except OSError as exc:
        sys.stderr.write(f"pfsmount: cannot start user code: {exc}\n")
        return 127
    if pid == 0:
        _exec(cmd)
    child = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(child, select.POLLIN)
    poller.register(_lifeline, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if _lifeline in ready:
            _orphaned()
        if child in ready:
            break
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code < 0:
        # Mirror death by signal so pfsmount sees the same status as without us.
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)
