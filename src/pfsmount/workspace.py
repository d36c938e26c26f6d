"""A pipeline's workspace: every path pfsmount keeps for it, and its lock.

    DATA/<pipeline>/                                the output repo
    DATA/.pfsmount/<pipeline>/lock                  flock held by the running pfsmount
    DATA/.pfsmount/<pipeline>/ledger.sqlite         jobs, datums, output files, redo log
    DATA/.pfsmount/<pipeline>/staging/<worker>/<n>/ /pfs/out of one attempt of that worker
    DATA/.pfsmount/<pipeline>/logs/<job-id>.jsonl   user output lines of one job
    DATA/.pfsmount/<pipeline>/run/                  while a job runs (`sandbox.RunDir`)

Repo names cannot start with a dot, so `.pfsmount` never collides with a repo. A
`Workspace` is complete when constructed: every name is computed here, once, and each name a
writer uses is keyed by that writer (worker index; job id for logs), so two writers never
clear or resume each other's work.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from pfsmount.sandbox import RunDir, run_dir

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

    @classmethod
    def of(cls, data_dir: str, pipeline: str) -> Workspace:
        root = os.path.join(data_dir, WORK_DIR, pipeline)
        return cls(
            data_dir=data_dir, pipeline=pipeline, root=root,
            repo_dir=os.path.join(data_dir, pipeline),
            lock_path=os.path.join(root, "lock"),
            ledger_path=os.path.join(root, "ledger.sqlite"),
            staging_root=os.path.join(root, "staging"),
            logs_dir=os.path.join(root, "logs"),
            run=run_dir(root),
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
        logs = self.logs_dir
        if os.path.isdir(logs) and not os.path.islink(logs):
            os.chmod(logs, 0o700)
            with os.scandir(logs) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        os.chmod(entry.path, 0o600)

    def lock(self) -> int:
        """Take the pipeline's lock for this process's life (two runs would corrupt each
        other); returns the fd that holds it. Raises WorkspaceBusy naming the holder."""
        self.create()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        os.fchmod(fd, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkspaceBusy(
                f"pipeline '{self.pipeline}' is already running on this data directory "
                f"(pid {holder}); wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
