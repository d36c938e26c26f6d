"""What user code gets from pfsmount besides /pfs: its run directory and its namespaces.

A job's run directory, `DATA/.pfsmount/<pipeline>/run/`, exists only while the job runs
(a leftover from a run that was killed is removed by the next one):

- `bin/` (0700): the `pachctl` and `pfsmount` shims, put first on the user code's PATH, and
  the local worker socket (`local_socket_path`);
- `python/pfsmount`: a link to this package, appended to PYTHONPATH, so the user's own
  interpreter can `import pfsmount.client` without pfsmount's dependencies;
- `tmp/<worker>/`: each worker's private /tmp, bind-mounted over /tmp in its mount namespace.

Whether user code gets a PID and mount namespace is decided once per job (`Sandbox.probe`);
`reaper.py` builds them for each process it starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import trio

log = logging.getLogger(__name__)

REAPER = str(Path(__file__).with_name("reaper.py"))
PACKAGE_DIR = str(Path(__file__).resolve().parent)
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def local_socket_path(bin_dir: str, name: str = "worker.sock") -> str:
    """Where the worker's local socket for pfsmount's own clients lives.

    In the job's bin directory when the path fits a Unix socket address; a deep data directory
    gets a short private directory under /run/pfsmount (or the temp directory when /run is not
    ours) named after the bin directory, so the next run finds and replaces a leftover.
    """
    path = os.path.join(bin_dir, name)
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(bin_dir)).hexdigest()[:16]
    base = "/run/pfsmount" if os.access("/run", os.W_OK) else os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "pfsmount-sock")
    return os.path.join(base, digest, name)


@dataclass(frozen=True)
class RunDir:
    """The per-run directory of one pipeline's job (see the module docstring)."""

    root: str

    @property
    def bin_dir(self) -> str:
        return os.path.join(self.root, "bin")

    @property
    def python_dir(self) -> str:
        return os.path.join(self.root, "python")

    @property
    def socket_path(self) -> str:
        return local_socket_path(self.bin_dir)

    def worker_socket(self, worker: int) -> str:
        """Worker `worker`'s local socket: `socket_path` for worker 0, as with one worker."""
        if worker == 0:
            return self.socket_path
        return local_socket_path(self.bin_dir, f"worker{worker}.sock")

    @property
    def fuse_dir(self) -> str:
        """Where the FUSE session is mounted when each worker binds its own root on /pfs."""
        return os.path.join(self.root, "mnt")

    def tmp_dir(self, worker: int = 0) -> str:
        return os.path.join(self.root, "tmp", str(worker))

    def create(self, workers: int = 1) -> None:
        """Create it afresh: whatever a killed run left behind goes first (blocking I/O)."""
        self.remove()
        os.makedirs(self.root, mode=0o700)
        os.mkdir(self.bin_dir, 0o700)
        os.chmod(self.bin_dir, 0o700)  # whatever the umask
        os.mkdir(self.python_dir, 0o755)
        os.symlink(PACKAGE_DIR, os.path.join(self.python_dir, "pfsmount"))
        for worker in range(workers):
            tmp = self.tmp_dir(worker)
            os.makedirs(tmp)
            # What /tmp is everywhere: user code that drops root must still write there. The
            # 0700 run directory keeps other users out of it from outside.
            os.chmod(tmp, 0o1777)
        sock_dir = os.path.dirname(self.socket_path)
        if sock_dir != self.bin_dir:
            os.makedirs(sock_dir, mode=0o700)
        if workers > 1:
            os.mkdir(self.fuse_dir, 0o700)

    def remove(self) -> None:
        sock_dir = os.path.dirname(self.socket_path)
        if sock_dir != self.bin_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)


def run_dir(work: str) -> RunDir:
    """The run directory inside the pipeline's workspace `work` (`workspace.Workspace.root`)."""
    return RunDir(os.path.join(work, "run"))


@dataclass(frozen=True)
class Sandbox:
    """How each user process is started: which namespaces, which /tmp."""

    pidns: bool = False
    tmp: str | None = None  # bind-mounted over /tmp (only with pidns)
    # With N workers: this worker's root in the FUSE session, bound on `mountpoint` (/pfs),
    # and the session's own mountpoint, detached inside the namespace.
    pfs: str | None = None
    mountpoint: str | None = None
    hide: str | None = None
    # The job's mountpoint when it is not /pfs: also bound on /pfs inside the namespace, so
    # user code written for Pachyderm (which names /pfs) finds its datum (`with_pfs_alias`).
    alias: str | None = None

    def for_worker(self, rundir: RunDir, worker: int, mountpoint: str | None) -> Sandbox:
        """Worker `worker`'s sandbox: its own /tmp, and (`mountpoint` given: N > 1) its own
        root of the FUSE session on /pfs."""
        tmp = rundir.tmp_dir(worker) if self.tmp else None
        if mountpoint is None:
            return replace(self, tmp=tmp)
        return replace(self, tmp=tmp, pfs=os.path.join(rundir.fuse_dir, str(worker)),
                       mountpoint=mountpoint, hide=rundir.fuse_dir)

    def reaper_args(self) -> list[str]:
        """The reaper's options for this sandbox."""
        args = ["--pidns"] if self.pidns else []
        if self.tmp:
            args += ["--tmp", self.tmp]
        if self.pfs and self.mountpoint and self.hide:
            args += ["--pfs", self.pfs, "--at", self.mountpoint, "--hide", self.hide]
        if self.alias:
            args += ["--alias", self.alias]
        return args

    def with_pfs_alias(self, mountpoint: str) -> Sandbox:
        """This sandbox, with `mountpoint` also shown at /pfs to user code where it can be.

        Only inside the mount namespace (nothing changes for other processes), and only
        over an existing /pfs directory: pfsmount does not create directories at the root of
        the machine. Otherwise user code that names /pfs will not find the datum; logged.
        """
        mountpoint = os.path.abspath(mountpoint)
        if mountpoint == "/pfs" or mountpoint.startswith("/pfs/"):
            # Below /pfs, a bind on /pfs would hide the mountpoint the datum's paths name.
            return self
        if not self.pidns:
            log.warning("user code sees the datum only at %s (no mount namespace here to show "
                        "it at /pfs too): programs that name /pfs will not find it", mountpoint)
            return self
        if not os.path.isdir("/pfs") or os.path.islink("/pfs"):
            log.warning("user code sees the datum only at %s: there is no /pfs directory to "
                        "show it on too, so programs that name /pfs will not find it "
                        "(`mkdir /pfs` lets them)", mountpoint)
            return self
        return replace(self, alias=mountpoint)


NO_SANDBOX = Sandbox()  # the process-group reaper alone


async def probe_namespaces() -> str | None:
    """None if user code can get PID and mount namespaces here, else the reason it cannot."""
    result = await trio.run_process([sys.executable, "-S", REAPER, "--probe"],
                                    capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode == 0:
        return None
    return result.stderr.decode(errors="replace").strip() or f"status {result.returncode}"


def tmp_conflict(paths: Iterable[str]) -> str | None:
    """The first of `paths` that a private /tmp would hide from user code, if any."""
    for path in paths:
        real = os.path.realpath(path)
        if real == "/tmp" or real.startswith("/tmp/"):
            return path
    return None


async def choose(rundir: RunDir, *, shared_tmp: bool, needed: Iterable[str]) -> Sandbox:
    """The sandbox this job's user code gets, logging once what it goes without and why.

    `needed` are paths user code must reach (the mountpoint, its working directory, the run
    directory, paths named in cmd): a private /tmp would hide any of them below /tmp.
    """
    reason = await probe_namespaces()
    if reason is not None:
        log.warning("user code runs without a PID namespace or private /tmp (%s); processes "
                    "it detaches from its process group may outlive the job", reason)
        return Sandbox()
    if shared_tmp:
        return Sandbox(pidns=True)
    if not os.path.isdir("/tmp") or os.path.islink("/tmp"):
        log.info("/tmp is shared with user code: it is not a plain directory here")
        return Sandbox(pidns=True)
    hidden = tmp_conflict(needed)
    if hidden is not None:
        log.info("/tmp is shared with user code: a private /tmp would hide %s from it", hidden)
        return Sandbox(pidns=True)
    return Sandbox(pidns=True, tmp=rundir.tmp_dir(0))


def absolute_paths(words: Iterable[str]) -> list[str]:
    """The words of a command that name existing absolute paths (a script, a data file)."""
    return [w for w in words if w.startswith("/") and os.path.lexists(w)]
