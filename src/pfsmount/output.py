"""A job's output: private staging per datum attempt, commit on success, publish at the end.

Layout inside the data directory (repo names cannot start with a dot, so this never
collides with a repo):

    DATA/.pfsmount/<pipeline>/job-<id>/staging/<n>/   what one attempt wrote to /pfs/out
    DATA/.pfsmount/<pipeline>/job-<id>/output/        the committed datums so far

A successful datum's files are renamed from its staging directory into `output/` (same
file system, so nothing is copied). When the job ends, `output/` is synced to disk and
swapped with DATA/<pipeline> in one atomic rename, so readers of the output repo see
either the previous job's output or this one's, never a mix.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field

import pyfuse3

from pfsmount import _linux

log = logging.getLogger(__name__)

WORK_DIR = ".pfsmount"


class OutputConflict(Exception):
    """Two datums wrote the same output path."""


@dataclass
class JobOutput:
    """Collects the outputs of one job's successful datums."""

    data_dir: str
    pipeline: str
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _owners: dict[str, str] = field(default_factory=dict)  # output path -> datum id
    _dirs: dict[str, str] = field(default_factory=dict)  # output dir -> first datum id
    _attempts: int = 0

    def __post_init__(self) -> None:
        self.job_dir = os.path.join(self.data_dir, WORK_DIR, self.pipeline, f"job-{self.job_id}")
        self.output_dir = os.path.join(self.job_dir, "output")
        self.repo_dir = os.path.join(self.data_dir, self.pipeline)
        os.makedirs(os.path.join(self.job_dir, "staging"), exist_ok=True)
        os.makedirs(self.output_dir, exist_ok=True)

    @property
    def committed_files(self) -> int:
        return len(self._owners)

    def new_staging(self) -> str:
        """A fresh, empty directory for one datum attempt's /pfs/out."""
        self._attempts += 1
        path = os.path.join(self.job_dir, "staging", str(self._attempts))
        os.mkdir(path, 0o755)
        return path

    def commit(self, staging: str, datum_id: str) -> int:
        """Move a successful attempt's files into the job output; returns how many.

        Raises OutputConflict, before moving anything, if a path was already written by
        another datum (or is a file where another datum made a directory).
        """
        files, dirs = _scan(staging)
        for rel in files:
            owner = self._owners.get(rel) or self._dirs.get(rel)
            if owner is not None:
                raise OutputConflict(
                    f"output path /{rel} was written by datum {owner} and datum {datum_id}; "
                    "each output path may come from one datum only (write datum-specific "
                    "names, e.g. include the input file name)"
                )
        for rel in dirs:
            owner = self._owners.get(rel)
            if owner is not None:
                raise OutputConflict(
                    f"output path /{rel} is a file from datum {owner} but a directory in "
                    f"datum {datum_id}"
                )
        for rel in dirs:
            os.makedirs(os.path.join(self.output_dir, rel), exist_ok=True)
            self._dirs.setdefault(rel, datum_id)
        for rel in files:
            os.rename(os.path.join(staging, rel), os.path.join(self.output_dir, rel))
            self._owners[rel] = datum_id
        _copy_dir_modes(staging, self.output_dir, dirs)
        shutil.rmtree(staging, ignore_errors=True)
        return len(files)

    def discard(self, staging: str) -> None:
        """Drop a failed attempt's output."""
        shutil.rmtree(staging, ignore_errors=True)

    def publish(self) -> None:
        """Make the committed output the output repo, durably and atomically."""
        pyfuse3.syncfs(self.output_dir)
        if os.path.isdir(self.repo_dir):
            _linux.renameat2(self.output_dir, self.repo_dir, _linux.RENAME_EXCHANGE)
        else:
            os.rename(self.output_dir, self.repo_dir)
        _fsync_dir(os.path.dirname(self.repo_dir))
        shutil.rmtree(self.job_dir, ignore_errors=True)

    def abandon(self) -> None:
        """Remove everything this job staged (nothing of it reaches the output repo)."""
        shutil.rmtree(self.job_dir, ignore_errors=True)


def _scan(root: str) -> tuple[list[str], list[str]]:
    """Relative paths of the non-directories and directories below `root`, parents first."""
    files: list[str] = []
    dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirs.extend(prefix + d for d in sorted(dirnames) if not os.path.islink(
            os.path.join(dirpath, d)))
        # os.walk lists symlinks to directories as directories; they are files to us.
        files.extend(prefix + d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
        files.extend(prefix + f for f in filenames)
    return files, dirs


def _copy_dir_modes(staging: str, output: str, dirs: list[str]) -> None:
    for rel in dirs:
        st = os.lstat(os.path.join(staging, rel))
        os.chmod(os.path.join(output, rel), st.st_mode & 0o7777)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_abandoned_jobs(data_dir: str, pipeline: str) -> list[str]:
    """Remove staging left by earlier runs of `pipeline` that were interrupted."""
    root = os.path.join(data_dir, WORK_DIR, pipeline)
    removed = []
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.startswith("job-"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                removed.append(name)
    return removed
