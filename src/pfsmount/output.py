"""The output repo: private staging per datum attempt, then a crash-safe commit per datum.

Its names come from the pipeline's `Workspace`: each worker stages its attempts in its own
`staging/<worker>/<n>/`, and the ledger says what the output repo holds, and why.

A datum's output enters the output repo in one logical step: its staged files are synced,
then one ledger transaction records the datum's new state, its files and the intended file
operations (the redo log); then the files are renamed into place (same file system: no
copy), synced, and the intent is cleared. `recover()` finishes whatever a crash interrupted.

Endings are group-committed: NextDatum only checks conflicts and queues the datum, and a
committer flushes the queue every few tens of milliseconds (and at the end of the job), so
one pair of syncs and one transaction serve many datums. A crash loses at most the queued
datums, which the resumed job simply runs again. Group commits run one at a time (a
crash between two of them must leave each one's intents in the log until it applied them).

Nothing in the output repo is followed: files are placed, directories made and old outputs
removed relative to directory fds opened with O_NOFOLLOW (`nofollow`), and an ending whose
files would land below a symlink no datum wrote fails, naming it.

The workspace `DATA/.pfsmount/<pipeline>` and the staging directories are private (0700):
they hold what user code wrote, which may be private, until it is committed. Committed files
keep the modes the user code gave them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pfsmount import nofollow
from pfsmount._linux import syncfs
from pfsmount.ledger import DatumEnding, Intent, Ledger, LedgerError
from pfsmount.names import display
from pfsmount.ownership import OutputIndex
from pfsmount.shards import Shard
from pfsmount.workspace import Workspace

log = logging.getLogger(__name__)

class OutputConflict(Exception):
    """Two datums wrote the same output path."""


class _NotRecorded(Exception):
    """A group of endings could not be recorded; nothing of it changed, except for a store
    that commits datum by datum: the endings in `committed` (datum ids) got through, and
    those in `failed` (datum id -> why) failed for good, so trying them alone is pointless."""

    def __init__(self, message: str, committed: frozenset[str] = frozenset(),
                 failed: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.committed = committed
        self.failed = failed or {}


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


@dataclass
class OutputRepo:
    """One pipeline's output repo, changed one datum at a time through the ledger."""

    data_dir: str
    pipeline: str
    ledger: Ledger
    job_id: str = ""
    hasher: Callable[[str], str] | None = None  # datum id -> its hash, for the ledger
    shard: Shard | None = None  # stages, recovers and cleans up only its own (`shards`)
    # A shard's check of files no datum of its own wrote, which may be another shard's:
    # (datum id, such paths it would add) -> the conflict, or None (`shardjob.ForeignOutputs`).
    foreign: Callable[[str, Sequence[str]], str | None] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one group commit at a time, in queue order
        self._batch: list[_Ending] = []
        self._unregistered: list[tuple[str, str, str, str]] | None = None
        self._committed: list[str] = []  # ids whose endings a flush committed (or failed)
        self._index: OutputIndex | None = None  # loaded from the ledger when first needed
        self._claims: dict[str, str] = {}  # output path -> queued datum that adds it
        self._releases: set[str] = set()  # output paths queued endings delete
        self.workspace = Workspace.of(self.data_dir, self.pipeline, self.shard)
        self.staging_root = self.workspace.staging_root
        self.repo_dir = self.workspace.repo_dir  # where the output repo is, for people
        self._attempts = 0
        self._worker_dirs: set[int] = set()  # workers whose staging directory exists
        self._open_repo()

    def _open_repo(self) -> None:
        os.makedirs(self.repo_dir, exist_ok=True)

    # ----- start of a run -------------------------------------------------------------

    def recover(self) -> int:
        """Finish file operations a crash interrupted; returns how many were pending."""
        pending = self.ledger.pending_intents()
        if not pending:
            return 0
        self._apply([intent for _, intent in pending])
        syncfs(self.repo_dir)
        self.ledger.clear_intents([seq for seq, _ in pending])
        return len(pending)

    def clear_staging(self) -> None:
        """Remove attempts' staging left by an earlier run (after `recover`, never before).

        Every worker's: at the start of a run, under the pipeline's lock, none is writing.
        """
        shutil.rmtree(self.staging_root, ignore_errors=True)
        os.makedirs(self.staging_root, mode=0o700, exist_ok=True)
        self._worker_dirs.clear()

    def forget_missing(self, datum_ids: Iterable[str]) -> int:
        """Remove the outputs of datums that no longer exist; returns how many datums.

        The ids are marked in the ledger as they come (a temporary table), so neither they
        nor the recorded ones are ever held in memory together.
        """
        self.ledger.mark_seen(datum_ids)
        return self.forget_unseen()

    def forget_unseen(self) -> int:
        """Remove the outputs of the recorded datums not marked seen (`Ledger.mark_seen`).

        Safe while the job commits: it runs as a group commit of its own (one at a time
        with the flushes), and a datum of this job that wrote a path a vanished datum owned
        waited for this (see `worker.Worker._close_attempt`).
        """
        with self._flush_lock:
            gone = self.ledger.unseen_datums()
            if not gone:
                return 0
            intents = [Intent("del", path) for d in gone for path in self.ledger.outputs_of(d)]
            seqs = self.ledger.forget_datums(gone, intents)
            with self._lock:
                if self._index is not None:
                    # Updated here, not reloaded: a reload could land on the trio thread.
                    for it in intents:
                        self._index.remove(it.path)
            self._settle(intents, seqs)
        return len(gone)

    def load_index(self) -> None:
        """Read which datum owns each output file (blocking; done before the job starts)."""
        with self._lock:
            self._outputs()

    def untracked(self) -> list[str]:
        """Files in the output repo that no datum wrote (left alone, but worth a warning),
        as `names.display` text."""
        files, _ = _scan(self.repo_dir)
        with self._lock:
            owned = self._outputs()
            return [display(f) for f in files if f not in owned]

    def register_later(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """Register the job's datums (see `Ledger.record_datums`) with the first flush.

        Inserting 100,000 rows is a third of a second that the first datum need not wait
        for: nothing reads them before a datum ends, and every ending is committed by a
        flush, which registers first. A crash before that resumes the job with no datum
        done, which is the truth.
        """
        with self._lock:
            # Datums are planned in batches while the repos are listed: each batch joins
            # the rows the next flush registers, before any of its datums can end.
            if self._unregistered is None:
                self._unregistered = list(rows)
            else:
                self._unregistered.extend(rows)

    # ----- the job's record where the output repo is -----------------------------------

    def publish_job(self, job: dict[str, Any]) -> None:
        """Make the job's row (`Ledger.job`) readable by any machine that reads this output
        repo. Locally the ledger beside the output repo already is."""

    def publish_log(self, job_id: str, path: str, *, final: bool) -> None:
        """Make the job log at `path` readable beside the output repo (locally it is)."""

    def shard_conflicts(self) -> list[str]:
        """A shard's output paths that datums of another shard wrote too (each a message):
        this shard's outputs are published for the others first (`shardjob`). Empty when
        the job is not sharded."""
        if self.shard is None:
            return []
        from pfsmount.shardjob import publish_outputs

        return publish_outputs(self.workspace, self.ledger)

    # ----- datum attempts ---------------------------------------------------------------

    def new_staging(self, worker: int = 0) -> str:
        """A fresh, empty directory for one attempt's /pfs/out on worker `worker`."""
        with self._lock:  # prepared in threads, possibly for several workers at once
            self._attempts += 1
            attempt = self._attempts
        parent = self.workspace.staging_dir(worker)
        if worker not in self._worker_dirs:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            self._worker_dirs.add(worker)
        path = os.path.join(parent, str(attempt))
        os.mkdir(path, 0o700)
        return path

    def discard(self, staging: str) -> None:
        """Drop an attempt's output."""
        _remove_tree(staging)

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
        Flushes from several threads (the committer, the end of the job) run one after the
        other, so groups reach the output repo in the order their endings were queued.
        """
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> list[tuple[str, str]]:
        with self._lock:
            batch, self._batch = self._batch, []
            rows, self._unregistered = self._unregistered, None
        if rows is not None:
            try:
                self.ledger.record_datums(self.job_id, rows)
            except LedgerError as exc:
                with self._lock:
                    # Tried again at the next flush, with any registered meanwhile.
                    self._unregistered = rows + (self._unregistered or [])
                return self._fail(batch, f"could not register the job's datums: {exc}")
        if not batch:
            return []
        vetted, failures = self._vet(batch)
        try:
            self._commit(vetted)
        except _NotRecorded as group:
            for ending in vetted:
                if ending.datum_id in group.committed:
                    continue
                if ending.datum_id in group.failed:
                    failures += self._fail([ending], group.failed[ending.datum_id])
                    continue
                try:
                    self._commit([ending])
                except _NotRecorded as exc:
                    failures += self._fail([ending], str(exc))
        self._unclaim(batch)
        self._unclaim(vetted)
        with self._lock:
            self._committed.extend(e.datum_id for e in batch)
        return failures

    def drain_committed(self) -> list[str]:
        """The ids of the datums whose endings flushes settled since the last call."""
        with self._lock:
            done, self._committed = self._committed, []
        return done

    def _vet(self, batch: Sequence[_Ending]) -> tuple[list[_Ending], list[tuple[str, str]]]:
        """Fail the endings whose files would land below a symlink no datum wrote, or
        replace a directory of files no datum wrote.

        Such a symlink (`u -> /tmp/victim`) was put into the output repo by someone else;
        writing through it would put the datum's files outside the data directory. The
        datum fails (its output is dropped, its earlier outputs go, as for any failure)
        with a message naming the symlink. Checked here, in the committer thread, right
        before the ledger promises the files; `_apply` refuses to follow one regardless.
        """
        kept: list[_Ending] = []
        failures: list[tuple[str, str]] = []
        seen: dict[tuple[str, ...], str | None] = {}
        for e in batch:
            problem = self._obstacle(e, seen) if e.staging else None
            if problem is None:
                kept.append(e)
                continue
            if e.staging:
                self.discard(e.staging)
            with self._lock:
                dels = [Intent("del", p) for p in self._outputs().outputs_of(e.datum_id)]
            kept.append(_Ending(e.datum_id, "failed", e.attempts, e.seconds, problem, dels, [],
                                None))
            failures.append((e.datum_id, problem))
        return kept, failures

    def _obstacle(self, e: _Ending, seen: dict[tuple[str, ...], str | None]) -> str | None:
        adds = [it.path for it in e.intents if it.op == "add"]
        wanted = [(path, tuple(nofollow.split(path)[:-1])) for path in adds]
        wanted += [(d, tuple(nofollow.split(d))) for d in e.dirs]
        for path, parts in wanted:
            if not parts:
                continue
            if parts not in seen:
                link = nofollow.first_symlink(self.repo_dir, parts)
                with self._lock:
                    tracked = link is not None and link in self._outputs()
                seen[parts] = None if tracked else link
            link = seen[parts]
            if link is not None:
                return (f"output path /{display(path)} cannot be committed: "
                        f"{display(os.path.join(self.repo_dir, link))} is a symlink that no "
                        "datum wrote, and pfsmount never writes through a symlink in the output "
                        "repo (remove it or move it out of the output repo, then run again)")
        for path in adds:
            if self._foreign_tree(path):
                return (f"output path /{display(path)} cannot be committed: "
                        f"{display(os.path.join(self.repo_dir, path))} is a directory holding "
                        "files no datum wrote (move it out of the output repo, then run again)")
        if self.foreign is not None:
            with self._lock:
                index = self._outputs()
                unknown = [path for path in adds if path not in index]
            return self.foreign(e.datum_id, unknown)
        return None

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
            syncfs(self.staging_root)
            _crash_point("before-ledger")
            seqs = self.ledger.finish_datums(self.job_id, [
                DatumEnding(e.datum_id, self._hash(e.datum_id), e.state, e.attempts, e.seconds,
                            e.error, e.intents) for e in batch])
        except (OSError, LedgerError) as exc:
            raise _NotRecorded(str(exc)) from None
        _crash_point("after-ledger")
        self._index_endings(batch)
        # From here on the ledger has promised these files: a failure is finished by
        # recover() at the next start, never rolled back.
        for e in batch:
            if e.staging:
                self._make_dirs(e.staging, e.dirs)
        self._settle([it for e in batch for it in e.intents], seqs)
        for e in batch:
            if e.staging:
                _remove_tree(e.staging)

    # ----- internals ------------------------------------------------------------------

    def _index_endings(self, batch: Sequence[_Ending]) -> None:
        """Make the in-memory owners say what the committed `batch` changed."""
        with self._lock:
            index = self._outputs()
            for e in batch:
                for it in e.intents:
                    if it.op == "add":
                        index.add(it.path, e.datum_id)
                    else:
                        index.remove(it.path)

    def _foreign_tree(self, path: str) -> bool:
        """True if a file at `path` would replace a non-empty directory no datum wrote."""
        try:
            if not stat.S_ISDIR(os.lstat(os.path.join(self.repo_dir, path)).st_mode):
                return False
            empty = not os.listdir(os.path.join(self.repo_dir, path))
        except (FileNotFoundError, NotADirectoryError):
            return False
        with self._lock:
            return not empty and self._outputs().owner(path, below=True) is None

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
                    f"output path /{display(path)} {clash}; each output path may come from one "
                    "datum only (write datum-specific names, e.g. include the input file name)")
        for path in dirs:
            owner = self._owner(path, below=False)
            if owner is not None and owner != datum_id:
                raise OutputConflict(
                    f"output path /{display(path)} is a directory in datum {datum_id} but a "
                    f"file or symlink in datum {owner} (a symlink is not merged as a directory, "
                    "even one that points to a directory); each output path may come from one "
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

    def _settle(self, intents: Sequence[Intent], seqs: Sequence[int]) -> None:
        """Apply logged operations, make them durable, and clear them (`seqs`) from the log."""
        if not intents:
            return
        self._apply(intents)
        syncfs(self.repo_dir)
        self.ledger.clear_intents(seqs)

    def _apply(self, intents: Sequence[Intent]) -> None:
        # Every operation is idempotent, so a redo after a crash can replay them all.
        for n, it in enumerate(intents):
            if n == 1:
                _crash_point("mid-apply")
            try:
                if it.op == "del":
                    nofollow.remove(self.repo_dir, it.path)
                else:
                    src_root, src_rel = self._source(it.source)
                    nofollow.move_in(src_root, src_rel, self.repo_dir, it.path)
            except nofollow.InTheWay as exc:
                # Put there after `_vet` looked (or before a crash's redo): still never
                # followed. The ledger lists the file; the output repo cannot hold it.
                log.error("output path /%s was not %s: %s in %s is in the way (a symlink or "
                          "file no datum wrote); remove it and run again",
                          display(it.path), "removed" if it.op == "del" else "committed",
                          display(exc.where), display(self.repo_dir))

    def _source(self, source: str) -> tuple[str, str]:
        """(root, relative path) of a staged file: below the staging root, nothing followed."""
        prefix = self.staging_root + os.sep
        if source.startswith(prefix):
            return self.staging_root, source[len(prefix):]
        return os.path.dirname(source), os.path.basename(source)

    def _make_dirs(self, staging: str, dirs: Sequence[str]) -> None:
        for rel in dirs:
            mode = os.lstat(os.path.join(staging, rel)).st_mode & 0o7777
            try:
                nofollow.make_dir(self.repo_dir, rel, mode)
            except nofollow.InTheWay as exc:
                log.error("directory /%s of the output was not made: %s in %s is in the way",
                          display(rel), display(exc.where), display(self.repo_dir))


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
            # A symlink may have to become its target's content (`outlinks`): not here.
            if (len(files) == limit or entry.is_dir(follow_symlinks=False)
                    or entry.is_symlink()):
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


def _remove_tree(path: str) -> None:
    """Remove a staging directory and whatever is left in it.

    After a commit a flat staging directory is empty (its files were renamed into the
    repo): one rmdir, instead of rmtree's six system calls and Python loop on the
    committer thread, which competes for the GIL with the FUSE requests being served.
    """
    try:
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
