"""The process between pfsmount and user code: nothing the user code starts outlives it.

pfsmount starts user code as `python -S reaper.py --lifeline FD [--pidns] [--tmp DIR]
[--pfs SRC --at DST --hide DIR] [--alias DIR] -- CMD...`. This process leads the user code's
process group and watches two things at once: its child (through a pidfd) and the read end FD
of a pipe whose write end only pfsmount holds. The pipe reaches EOF when the pfsmount *process* is
gone, however it died (even by SIGKILL, which it cannot catch), and then everything is killed
at once: with /pfs gone, a program that lived on could write into the bare mountpoint
directory. (The kernel's parent-death signal is no substitute: it fires when the *thread* that
forked us exits, and pfsmount starts us from a worker thread that trio retires after 10 s
idle.)

With `--pidns` (pfsmount checked that it may create namespaces) the reaper unshares a PID and
a mount namespace and forks an init, pid 1 of the new PID namespace, which runs CMD. When that
init dies the kernel kills every process in the namespace, however it detached (`setsid`,
double fork, `nohup`). Inside, / is made a recursive slave (unmounts outside still reach in),
a fresh /proc shows only the namespace's processes, and `--tmp DIR` is bind-mounted over /tmp.
With several workers, `--pfs SRC --at DST` bind-mounts this worker's root of the FUSE session
(SRC, below the session's mountpoint) on DST (the /pfs path), and `--hide DIR` then detaches
the session's own mountpoint inside the namespace, so the worker reaches no other worker's root.
`--alias DIR` (pfsmount mounted elsewhere than /pfs) also binds DIR on /pfs inside the namespace,
so programs that name /pfs find their datum there.
Without `--pidns` the process group, plus orphans adopted as a child subreaper, is what can
be reached.

An orderly stop (SIGTERM to the reaper): SIGTERM to every process of the job, a grace period,
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

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_REC, MS_SLAVE = 4096, 16384, 1 << 19
MNT_DETACH = 2
GRACE_SECONDS = float(os.environ.get("PFSMOUNT_REAPER_GRACE", "5"))
USAGE = ("usage: reaper.py --lifeline FD [--pidns] [--tmp DIR] [--pfs SRC --at DST --hide DIR]"
         " [--alias DIR]"
         " -- CMD [ARG...] | --probe\n")

_lifeline = -1  # read end of pfsmount's pipe: EOF means pfsmount is gone
_init = -1  # pidfd of the namespace's init, when there is one (immune to pid reuse)
_stopping = False  # init: SIGTERM arrived; wait for every process, not just CMD


class SetupError(Exception):
    """The sandbox could not be built; the message says which step failed."""


def _libc():
    # The running process's own symbols include libc's; find_library would cost ~15 ms of
    # start-up, paid for every datum without batching.
    return ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _mount(libc, source, target, fstype, flags, what):
    _check(libc.mount(source, target, fstype, flags, None), what)


def _closed(fd):
    """Whether the other end of pipe `fd` is closed (poll: fd numbers may exceed 1024)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _pfsmount_gone():
    return _closed(_lifeline)


# ----- the reaper, outside the namespace ---------------------------------------------------


def _stop_group(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        if _init >= 0:
            signal.pidfd_send_signal(_init, signal.SIGTERM)  # init passes it on to all inside
        else:
            os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline and not _pfsmount_gone():
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
    _kill_all()


def _kill_all():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _init >= 0:
        # The namespace dies with its init, whatever its processes did to detach.
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(_init, signal.SIGKILL)
    os.killpg(0, signal.SIGKILL)


def _watch(pid, child):
    """Wait for `pid` (our child, pidfd `child`); if pfsmount goes first, kill all at once."""
    poller = select.poll()
    poller.register(child, select.POLLIN)
    poller.register(_lifeline, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if _lifeline in ready:
            # pfsmount is gone and so is /pfs: every moment the program lives on it may
            # write into the bare mountpoint directory. No grace period.
            _kill_all()
        if child in ready:
            break
    return os.waitpid(pid, 0)[1]


def _exec(argv):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Python ignores these for itself; a program must start with the defaults (`yes | head`).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"pfsmount: cannot run {argv[0]!r}: {exc.strerror}\n")
        os._exit(127)


def _run_in_group(cmd):
    _check(_libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    signal.signal(signal.SIGTERM, _stop_group)
    pid = os.fork()
    if pid == 0:
        _exec(cmd)
    return _watch(pid, os.pidfd_open(pid))


def _run_in_namespace(cmd, tmp, pfs):
    global _init
    libc = _libc()
    _check(libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare(CLONE_NEWPID | CLONE_NEWNS)")
    alive_r, alive_w = os.pipe()  # init learns of our death before its death signal is armed
    status_r, status_w = os.pipe()  # init hands CMD's wait status back
    # SIGTERM waits until init has its own handler (as pid 1, a signal without one is lost).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, _stop_group)
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        os.close(status_r)
        try:
            _be_init(libc, cmd, tmp, pfs, alive_r, status_w)
        except SetupError as exc:
            sys.stderr.write(f"pfsmount: cannot set up the user code's sandbox: {exc}\n")
        os._exit(127)
    _init = os.pidfd_open(pid)
    os.close(status_w)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    status = _watch(pid, _init)
    reported = os.read(status_r, 32)
    return int(reported) if reported else status


# ----- init, pid 1 of the namespace ------------------------------------------------------


def _init_stop(signum, frame):
    global _stopping
    _stopping = True
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGTERM)  # from pid 1: every other process in the namespace


def _be_init(libc, cmd, tmp, pfs, alive_r, status_w):
    signal.signal(signal.SIGTERM, _init_stop)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    # The reaper is single-threaded, so its death (and only that) fires the signal; if it
    # died before the signal was armed, its end of the pipe is already closed.
    if _closed(alive_r):
        os._exit(1)
    _make_mounts(libc, tmp, pfs)
    pid = os.fork()
    if pid == 0:
        _exec(cmd)
    # A SIGTERM that came before CMD existed is delivered now, and reaches CMD.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    status = None
    while True:
        try:
            reaped, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if reaped == pid:
            status = st
            if not _stopping:
                break  # the job's program is done; the kernel ends the rest with us
    if status is not None:
        os.write(status_w, str(status).encode())
    os._exit(0)


def _make_mounts(libc, tmp, pfs=None):
    _mount(libc, None, b"/", None, MS_REC | MS_SLAVE, "making / a recursive slave mount")
    _mount(libc, b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "mounting a fresh /proc")
    if pfs:
        # Before /tmp: the session's mountpoint may lie below the real /tmp.
        source, target, hide, alias = pfs
        if source:
            _mount(libc, os.fsencode(source), os.fsencode(target), None, MS_BIND,
                   f"bind-mounting {source} on {target}")
            _check(libc.umount2(os.fsencode(hide), MNT_DETACH), f"hiding {hide}")
        if alias:
            _mount(libc, os.fsencode(alias), b"/pfs", None, MS_BIND,
                   f"bind-mounting {alias} on /pfs")
    if tmp:
        _mount(libc, os.fsencode(tmp), b"/tmp", None, MS_BIND, f"bind-mounting {tmp} on /tmp")


def probe():
    """Exit status 0 if this process may build the namespace sandbox, else 1 and why."""
    try:
        libc = _libc()
        _check(libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare(CLONE_NEWPID | CLONE_NEWNS)")
        pid = os.fork()
        if pid == 0:
            try:
                _make_mounts(libc, None)
            except SetupError as exc:
                sys.stderr.write(f"{exc}\n")
                os._exit(1)
            os._exit(0)
        return 1 if os.waitpid(pid, 0)[1] else 0
    except (SetupError, OSError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1


def _parse(argv):
    """(lifeline fd, pidns, tmp, pfs, cmd), or None when malformed."""
    try:
        end = argv.index("--")
    except ValueError:
        return None
    opts, cmd = argv[:end], argv[end + 1:]
    lifeline, pidns, tmp = None, False, None
    pfs = {}
    while opts:
        flag = opts.pop(0)
        if flag == "--pidns":
            pidns = True
        elif flag == "--lifeline" and opts and opts[0].isdigit():
            lifeline = int(opts.pop(0))
        elif flag == "--tmp" and opts:
            tmp = opts.pop(0)
        elif flag in ("--pfs", "--at", "--hide", "--alias") and opts:
            pfs[flag] = opts.pop(0)
        else:
            return None
    if lifeline is None or not cmd or ((tmp or pfs) and not pidns):
        return None
    binds = [pfs.get(f) for f in ("--pfs", "--at", "--hide")]
    if any(binds) and not all(binds):
        return None
    mounts = (*binds, pfs.get("--alias")) if pfs else None
    return lifeline, pidns, tmp, mounts, cmd


def main(argv):
    global _lifeline
    if argv == ["--probe"]:
        return probe()
    parsed = _parse(argv)
    if parsed is None:
        sys.stderr.write(USAGE)
        return 2
    _lifeline, pidns, tmp, pfs, cmd = parsed
    # The user's program has no business with the pipe.
    os.set_inheritable(_lifeline, False)
    try:
        if pidns:
            return os.waitstatus_to_exitcode(_run_in_namespace(cmd, tmp, pfs))
        return os.waitstatus_to_exitcode(_run_in_group(cmd))
    except (SetupError, OSError) as exc:
        sys.stderr.write(f"pfsmount: cannot start user code: {exc}\n")
        return 127


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code < 0:
        # Mirror death by signal so pfsmount sees the same status as without us.
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)
