"""A pipeline's workspace: every path pfsmount keeps for it, and its lock.

    DATA/<pipeline>/                                the output repo
    DATA/.pfsmount/<pipeline>/lock                  flock held by the running pfsmount
    DATA/.pfsmount/<pipeline>/ledger.sqlite         jobs, datums, output files, redo log
    DATA/.pfsmount/<pipeline>/staging/<worker>/<n>/ /pfs/out of one attempt of that worker
    DATA/.pfsmount/<pipeline>/logs/<job-id>.jsonl   user output lines of one job
    DATA/.pfsmount/<pipeline>/run/                  while a job runs (`sandbox.RunDir`)
    DATA/.pfsmount/<pipeline>/shard-I-of-N/         shard I's own lock, ledger, staging, logs
                                                    and run dir, laid out as above (`shards`)

With `--data s3://...` (outputs in the bucket), DATA is the local state directory
(`--state-dir`): the ledger there only mirrors the bucket's commit records, and the output
repo and the records' own names are `s3output.Layout`'s.

Repo names cannot start with a dot, so `.pfsmount` never collides with a repo. A
`Workspace` is complete when constructed: every name is computed here, once, and each name a
writer uses is keyed by that writer (worker index; job id for logs), so two writers never
clear or resume each other's work. A shard of a sharded job (`--shard I/N`) gets a private
subtree for everything it writes, so N shards share one data directory (a ReadWriteMany
volume) with no file written by two of them: one SQLite ledger per shard, as SQLite is not
safe across machines on NFS.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass

from pfsmount.sandbox import RunDir, run_dir
from pfsmount.shards import Shard

WORK_DIR = ".pfsmount"


class WorkspaceBusy(Exception):
    """Another pfsmount holds the pipeline's lock; the message names it and what to do."""


@dataclass(frozen=True)
class Workspace:
    """The on-disk names of one pipeline (`PipelineSpec.location`) in one data directory."""

    data_dir: str
    pipeline: str
    root: str
    repo_dir: str
    lock_path: str
    ledger_path: str
    staging_root: str
    logs_dir: str
    run: RunDir
    shard: Shard | None = None  # a shard writes only below `own`
    own: str = ""  # the root of this writer's names: `root`, or `root/shard-I-of-N`

    @classmethod
    def of(cls, data_dir: str, pipeline: str, shard: Shard | None = None) -> Workspace:
        root = os.path.join(data_dir, WORK_DIR, pipeline)
        if shard is not None and shard.count == 1:
            shard = None  # one shard of one is the whole job: today's layout
        own = root if shard is None else os.path.join(root, shard.key)
        return cls(
            data_dir=data_dir, pipeline=pipeline, root=root,
            repo_dir=os.path.join(data_dir, pipeline),
            lock_path=os.path.join(own, "lock"),
            ledger_path=os.path.join(own, "ledger.sqlite"),
            staging_root=os.path.join(own, "staging"),
            logs_dir=os.path.join(own, "logs"),
            run=run_dir(own),
            shard=shard, own=own,
        )

    def staging_dir(self, worker: int) -> str:
        """Where worker `worker` stages its attempts' /pfs/out (one subdirectory each)."""
        return os.path.join(self.staging_root, str(worker))

    def log_path(self, job_id: str) -> str:
        return os.path.join(self.logs_dir, f"{job_id}.jsonl")

    def create(self) -> None:
        """Create it readable by its owner only, tightening one an older version made.

        The ledger, the job logs and the staging directories hold what user code wrote and
        printed; older pfsmount versions made them 0755/0644.
        """
        os.makedirs(os.path.dirname(self.root), mode=0o700, exist_ok=True)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        if self.own != self.root:
            os.makedirs(self.own, mode=0o700, exist_ok=True)
        logs = self.logs_dir
        if os.path.isdir(logs) and not os.path.islink(logs):
            os.chmod(logs, 0o700)
            with os.scandir(logs) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        os.chmod(entry.path, 0o600)

    def lock(self) -> int:
        """Take this writer's lock for this process's life (two runs would corrupt each
        other); returns the fd that holds it. Raises WorkspaceBusy naming the holder.

        The pipeline's lock, or a shard's own (then with `lock_shared` beside it)."""
        self.create()
        return _take(self.lock_path, fcntl.LOCK_EX, self._busy)

    def lock_shared(self) -> int:
        """A shard's hold on the pipeline's lock, shared with the other shards: N shards run
        side by side, but a whole-job run (which holds it exclusively) never beside them.
        flock over NFS is a lock on the server, so this holds across machines too."""
        self.create()
        return _take(os.path.join(self.root, "lock"), fcntl.LOCK_SH, self._busy)

    def _busy(self, path: str, holder: str) -> WorkspaceBusy:
        if self.shard is not None and path == self.lock_path:
            return WorkspaceBusy(
                f"shard {self.shard} of pipeline '{self.pipeline}' is already running on this "
                f"data directory ({holder}); wait for it to finish or stop it first")
        if self.shard is not None:
            return WorkspaceBusy(
                f"pipeline '{self.pipeline}' is running unsharded on this data directory "
                f"({holder}); its shards cannot run beside it: wait for it to finish")
        return WorkspaceBusy(
            f"pipeline '{self.pipeline}' is already running on this data directory "
            f"({holder}); wait for it to finish or stop it first")


def _take(path: str, how: int, busy: Callable[[str, str], WorkspaceBusy]) -> int:
    """Open `path` and flock it (`how`) without waiting; an exclusive holder leaves its pid."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = "pid " + (os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown")
        try:
            # Shared holders (shards) leave no pid; a stale one of an earlier run may be there.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            holder = "as shards"
        except BlockingIOError:
            pass
        os.close(fd)
        raise busy(path, holder) from None
    except BaseException:
        os.close(fd)
        raise
    if how == fcntl.LOCK_EX:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
