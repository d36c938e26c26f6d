"""The output repo: private staging per datum attempt, then a crash-safe commit per datum.

Layout inside the data directory (repo names cannot start with a dot, so this never
collides with a repo):

    DATA/<pipeline>/                           the output repo
    DATA/.pfsmount/<pipeline>/ledger.sqlite    what the output repo holds, and why
    DATA/.pfsmount/<pipeline>/staging/<n>/     what one attempt wrote to /pfs/out

A datum's output enters the output repo in one logical step: its staged files are synced,
then one ledger transaction records the datum's new state, its files and the intended file
operations (the redo log); then the files are renamed into place (same file system: no
copy), synced, and the intent is cleared. `recover()` finishes whatever a crash interrupted.

Endings are group-committed: NextDatum only checks conflicts and queues the datum, and a
committer flushes the queue every few tens of milliseconds (and at the end of the job), so
one pair of syncs and one transaction serve many datums. A crash loses at most the queued
datums, which the resumed job simply runs again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyfuse3

from pfsmount.ledger import DatumEnding, Intent, Ledger, LedgerError
from pfsmount.ownership import OutputIndex

log = logging.getLogger(__name__)

WORK_DIR = ".pfsmount"


class OutputConflict(Exception):
    """Two datums wrote the same output path."""


class _NotRecorded(Exception):
    """A group of endings could not be recorded; nothing of it changed."""


@dataclass
class _Ending:
    """A datum ending queued for the next group commit."""

    datum_id: str
    state: str
    attempts: int
    seconds: float
    error: str
    intents: list[Intent]
    dirs: list[str]
    staging: str | None


def work_dir(data_dir: str, pipeline: str) -> str:
    return os.path.join(data_dir, WORK_DIR, pipeline)


@dataclass
class OutputRepo:
    """One pipeline's output repo, changed one datum at a time through the ledger."""

    data_dir: str
    pipeline: str
    ledger: Ledger
    job_id: str = ""
    hasher: Callable[[str], str] | None = None  # datum id -> its hash, for the ledger

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._batch: list[_Ending] = []
        self._unregistered: Sequence[tuple[str, str, str, str]] | None = None
        self._index: OutputIndex | None = None  # loaded from the ledger when first needed
        self._claims: dict[str, str] = {}  # output path -> queued datum that adds it
        self._releases: set[str] = set()  # output paths queued endings delete
        self.work = work_dir(self.data_dir, self.pipeline)
        self.staging_root = os.path.join(self.work, "staging")
        self.repo_dir = os.path.join(self.data_dir, self.pipeline)
        self._attempts = 0
        os.makedirs(self.repo_dir, exist_ok=True)

    # ----- start of a run -------------------------------------------------------------

    def recover(self) -> int:
        """Finish file operations a crash interrupted; returns how many were pending."""
        pending = self.ledger.pending_intents()
        if not pending:
            return 0
        self._apply([intent for _, intent in pending])
        pyfuse3.syncfs(self.repo_dir)
        self.ledger.clear_intents(pending[-1][0])
        return len(pending)

    def clear_staging(self) -> None:
        """Remove attempts' staging left by an earlier run (after `recover`, never before)."""
        shutil.rmtree(self.staging_root, ignore_errors=True)
        os.makedirs(self.staging_root, exist_ok=True)

    def forget_missing(self, datum_ids: set[str]) -> int:
        """Remove the outputs of datums that no longer exist; returns how many datums."""
        gone = sorted(self.ledger.known_datums() - datum_ids)
        if not gone:
            return 0
        intents = [Intent("del", path) for d in gone for path in self.ledger.outputs_of(d)]
        self.ledger.forget_datums(gone, intents)
        self._settle(intents)
        self._index = None
        return len(gone)

    def load_index(self) -> None:
        """Read which datum owns each output file (blocking; done before the job starts)."""
        with self._lock:
            self._outputs()

    def untracked(self) -> list[str]:
        """Files in the output repo that no datum wrote (left alone, but worth a warning)."""
        files, _ = _scan(self.repo_dir)
        with self._lock:
            owned = self._outputs()
            return [f for f in files if f not in owned]

    def register_later(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """Register the job's datums (see `Ledger.record_datums`) with the first flush.

        Inserting 100,000 rows is a third of a second that the first datum need not wait
        for: nothing reads them before a datum ends, and every ending is committed by a
        flush, which registers first. A crash before that resumes the job with no datum
        done, which is the truth.
        """
        with self._lock:
            self._unregistered = rows

    # ----- datum attempts ---------------------------------------------------------------

    def new_staging(self) -> str:
        """A fresh, empty directory for one datum attempt's /pfs/out."""
        self._attempts += 1
        path = os.path.join(self.staging_root, str(self._attempts))
        os.mkdir(path, 0o755)
        return path

    def discard(self, staging: str) -> None:
        """Drop an attempt's output."""
        shutil.rmtree(staging, ignore_errors=True)

    def stage_success(self, datum_id: str, staging: str, *, attempts: int, seconds: float,
                      listing: tuple[list[str], list[str]] | None = None) -> int:
        """Queue a successful attempt's files as the datum's output; returns how many files.

        Raises OutputConflict, before queueing anything, if a path is already an output of
        another datum (committed or queued), or a file where another datum has a directory,
        or the reverse. The output becomes durable at the next `flush`. `listing` is the
        staging directory's (files, dirs) when the caller already has it (`small_listing`);
        with it, nothing here blocks on I/O.
        """
        files, dirs = listing if listing is not None else _scan(staging)
        with self._lock:
            self._check_conflicts(datum_id, files, dirs)
            mine = set(files)
            intents = [Intent("del", p) for p in self._outputs().outputs_of(datum_id)
                       if p not in mine]
            intents += [Intent("add", p, os.path.join(staging, p)) for p in files]
            self._queue(_Ending(datum_id, "success", attempts, seconds, "", intents, dirs,
                                staging))
        return len(files)

    def stage_failure(self, datum_id: str, state: str, *, attempts: int, seconds: float,
                      error: str) -> None:
        """Queue a FAILED or RECOVERED ending: the datum keeps no output."""
        with self._lock:
            intents = [Intent("del", p) for p in self._outputs().outputs_of(datum_id)]
            self._queue(_Ending(datum_id, state, attempts, seconds, error, intents, [], None))

    @property
    def pending(self) -> int:
        return len(self._batch) + (self._unregistered is not None)

    def flush(self) -> list[tuple[str, str]]:
        """Commit every queued ending (group commit); returns (datum id, error) of failures.

        One sync and one ledger transaction cover the whole group. If the group cannot be
        committed (a full disk, say), each ending is tried alone so only the culprits fail.
        """
        with self._lock:
            batch, self._batch = self._batch, []
            rows, self._unregistered = self._unregistered, None
        if rows is not None:
            try:
                self.ledger.record_datums(self.job_id, rows)
            except LedgerError as exc:
                with self._lock:
                    self._unregistered = rows  # tried again at the next flush
                return self._fail(batch, f"could not register the job's datums: {exc}")
        if not batch:
            return []
        failures: list[tuple[str, str]] = []
        try:
            self._commit(batch)
        except _NotRecorded:
            for ending in batch:
                try:
                    self._commit([ending])
                except _NotRecorded as exc:
                    failures += self._fail([ending], str(exc))
        self._unclaim(batch)
        return failures

    def _fail(self, endings: Sequence[_Ending], why: str) -> list[tuple[str, str]]:
        """Give up on endings that could not be committed: their output is dropped."""
        for ending in endings:
            if ending.staging:
                self.discard(ending.staging)
        self._unclaim(endings)
        return [(ending.datum_id, f"could not commit its output: {why}") for ending in endings]

    def _unclaim(self, endings: Sequence[_Ending]) -> None:
        with self._lock:
            for ending in endings:
                for it in ending.intents:
                    self._claims.pop(it.path, None)
                    self._releases.discard(it.path)

    def _queue(self, ending: _Ending) -> None:
        self._batch.append(ending)
        for it in ending.intents:
            if it.op == "add":
                self._claims[it.path] = ending.datum_id
            else:
                self._releases.add(it.path)

    def _commit(self, batch: Sequence[_Ending]) -> None:
        try:
            # The staged bytes must be on disk before the ledger promises them.
            pyfuse3.syncfs(self.staging_root)
            _crash_point("before-ledger")
            self.ledger.finish_datums(self.job_id, [
                DatumEnding(e.datum_id, self._hash(e.datum_id), e.state, e.attempts, e.seconds,
                            e.error, e.intents) for e in batch])
        except (OSError, LedgerError) as exc:
            raise _NotRecorded(str(exc)) from None
        _crash_point("after-ledger")
        with self._lock:
            index = self._outputs()
            for e in batch:
                for it in e.intents:
                    if it.op == "add":
                        index.add(it.path, e.datum_id)
                    else:
                        index.remove(it.path)
        # From here on the ledger has promised these files: a failure is finished by
        # recover() at the next start, never rolled back.
        for e in batch:
            if e.staging:
                _make_dirs(e.staging, self.repo_dir, e.dirs)
        self._settle([it for e in batch for it in e.intents])
        for e in batch:
            if e.staging:
                shutil.rmtree(e.staging, ignore_errors=True)

    # ----- internals ------------------------------------------------------------------

    def _outputs(self) -> OutputIndex:
        # Callers hold self._lock.
        if self._index is None:
            self._index = OutputIndex(self.ledger.all_outputs())
        return self._index

    def _hash(self, datum_id: str) -> str:
        return self.hasher(datum_id) if self.hasher is not None else ""

    def _check_conflicts(self, datum_id: str, files: Sequence[str], dirs: Sequence[str]) -> None:
        for path in files:
            owner = self._owner(path, below=True)
            if owner is not None and owner != datum_id:
                same_path = path in self._claims or path in self._outputs()
                clash = (f"was written by datum {owner} and datum {datum_id}" if same_path else
                         f"of datum {datum_id} collides with datum {owner}'s output: a file or "
                         "symlink (even a symlink to a directory) in one is a directory in the "
                         "other")
                raise OutputConflict(
                    f"output path /{path} {clash}; each output path may come from one datum "
                    "only (write datum-specific names, e.g. include the input file name)")
        for path in dirs:
            owner = self._owner(path, below=False)
            if owner is not None and owner != datum_id:
                raise OutputConflict(
                    f"output path /{path} is a directory in datum {datum_id} but a file or "
                    f"symlink in datum {owner} (a symlink is not merged as a directory, even "
                    "one that points to a directory); each output path may come from one "
                    "datum only")

    def _owner(self, path: str, *, below: bool) -> str | None:
        """Who already has an output file colliding with `path`: queued first, then committed."""
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            claimant = self._claims.get("/".join(parts[:i]))
            if claimant is not None:
                return claimant
        if below:
            prefix = path + "/"
            for claimed, claimant in self._claims.items():
                if claimed.startswith(prefix):
                    return claimant
        owner = self._outputs().owner(path, below=below)
        if owner is not None and path in self._releases:
            return None  # its owner's queued ending deletes it
        return owner

    def _settle(self, intents: Sequence[Intent]) -> None:
        """Apply logged operations, make them durable, and clear the log."""
        if not intents:
            return
        self._apply(intents)
        pyfuse3.syncfs(self.repo_dir)
        pending = self.ledger.pending_intents()
        if pending:
            self.ledger.clear_intents(pending[-1][0])

    def _apply(self, intents: Sequence[Intent]) -> None:
        # Every operation is idempotent, so a redo after a crash can replay them all.
        for n, it in enumerate(intents):
            if n == 1:
                _crash_point("mid-apply")
            target = os.path.join(self.repo_dir, it.path)
            if it.op == "del":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
                _prune_empty(os.path.dirname(target), self.repo_dir)
            elif os.path.lexists(it.source):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.isdir(target) and not os.path.islink(target):
                    os.rmdir(target)  # an empty directory left by a datum that changed
                os.replace(it.source, target)


def _crash_point(name: str) -> None:
    """Die here, as a power cut would, when a crash test asks for it (PFSMOUNT_CRASH_AT)."""
    if os.environ.get("PFSMOUNT_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def small_listing(staging: str, limit: int = 64) -> tuple[list[str], list[str]] | None:
    """The (files, dirs) of a flat staging directory of at most `limit` entries, else None.

    Cheap enough for the trio thread (one short getdents, no stat: d_type says what is a
    directory); a bigger or nested output is listed by `_scan` in a worker thread.
    """
    files: list[str] = []
    with os.scandir(staging) as it:
        for entry in it:
            if len(files) == limit or entry.is_dir(follow_symlinks=False):
                return None
            files.append(entry.name)
    files.sort()
    return files, []


def _scan(root: str) -> tuple[list[str], list[str]]:
    """Relative paths of the non-directories and directories below `root`, parents first."""
    files: list[str] = []
    dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for d in sorted(dirnames):
            # os.walk lists symlinks to directories as directories; they are files to us.
            (files if os.path.islink(os.path.join(dirpath, d)) else dirs).append(prefix + d)
        files.extend(prefix + f for f in sorted(filenames))
    return files, dirs


def _make_dirs(staging: str, repo: str, dirs: Sequence[str]) -> None:
    for rel in dirs:
        target = os.path.join(repo, rel)
        os.makedirs(target, exist_ok=True)
        os.chmod(target, os.lstat(os.path.join(staging, rel)).st_mode & 0o7777)


def _prune_empty(directory: str, stop: str) -> None:
    """Remove directories left empty by deleted outputs, up to (not including) `stop`."""
    stop = os.path.abspath(stop)
    directory = os.path.abspath(directory)
    while directory.startswith(stop + os.sep):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)
