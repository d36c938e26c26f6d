"""The output repo in a bucket: outputs and commits written back to S3 (issue 15).

For pipeline P over the data location `s3://BUCKET/PREFIX/`:

    PREFIX/P/<path>                                   the output repo, as readers see it
    PREFIX/.pfsmount/P/blobs/<datum>/<token>/<path>   one ending's uploaded files
    PREFIX/.pfsmount/P/commits/<datum>/<seq>.json     the datum's commit records
    PREFIX/.pfsmount/P/jobs/<job>/<writer>.json       a job, as one writer last saw it
    PREFIX/.pfsmount/P/logs/<job>/<writer>.jsonl      that writer's user-output lines

Every name below `.pfsmount/P/` is keyed by who writes it: a datum's blobs and records only by
the process running that datum (with shards, the shard owning it: `owns`), jobs and logs by
the writer (one id per process), so two writers never overwrite or clear each other's.

A datum is committed in these steps (`_commit`, a group of datums at a time):
1. its staged files are uploaded as blobs under a fresh token (in parallel, multipart when
   large); nothing a reader sees has changed;
2. the commit point: one small JSON record `commits/<datum>/<seq>.json` (state, hash, job,
   token, output paths) written with `If-None-Match: *`, so a record is never overwritten
   (a second writer of the same datum gets 412 and fails loudly instead);
3. outputs the datum no longer produces are deleted, the blobs are copied server-side to
   `P/<path>`, then the blobs are deleted, then the datum's older records.

The newest record of a datum is the truth. A start on any machine (`recover`) lists the
records and blobs: a datum with blobs or with more than one record was interrupted in step 3
and is finished (copies from the blobs still there; the blobs go only after every copy);
blobs of a token no record names were never committed and are deleted. A datum that no
longer exists gets a tombstone record (state "deleted"), then its outputs and records go,
the tombstone last. The local SQLite ledger only mirrors the records (`mirror`), so job
state, incremental skips and resume work from a fresh state directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pfsmount.ledger import BucketMirror, DatumEnding, Intent, Ledger, LedgerError
from pfsmount.names import display
from pfsmount.output import OutputRepo, _crash_point, _Ending, _NotRecorded
from pfsmount.shards import Shard, shard_of
from pfsmount.store.base import StoreError
from pfsmount.store.s3out import AlreadyExists, BucketWriteError, OutputBucket

log = logging.getLogger(__name__)

DELETED = "deleted"  # a tombstone's state: the datum no longer exists
MAX_KEY_BYTES = 1024  # S3's limit on a key
LOG_INTERVAL = 5.0  # seconds between uploads of a running job's log
_SHARD_KEY = re.compile(r"shard-(\d+)-of-(\d+)")  # `Shard.key`


def everyone(datum_id: str) -> bool:
    """Who owns a datum when the job is not sharded."""
    return True


@dataclass(frozen=True)
class Layout:
    """Every key of one pipeline's output repo and its records, below the data prefix."""

    prefix: str  # "" or ending in "/"
    pipeline: str

    @property
    def outputs(self) -> str:
        return f"{self.prefix}{self.pipeline}/"

    @property
    def meta(self) -> str:
        return f"{self.prefix}.pfsmount/{self.pipeline}/"

    @property
    def commits(self) -> str:
        return f"{self.meta}commits/"

    @property
    def blobs(self) -> str:
        return f"{self.meta}blobs/"

    def output(self, path: str) -> str:
        return self.outputs + path

    def record(self, datum: str, seq: int) -> str:
        return f"{self.commits}{datum}/{seq:012d}.json"

    def blob(self, datum: str, token: str, path: str) -> str:
        return f"{self.blobs}{datum}/{token}/{path}"

    def job(self, job_id: str, writer: str) -> str:
        return f"{self.meta}jobs/{job_id}/{writer}.json"

    def jobs(self) -> str:
        return f"{self.meta}jobs/"

    def logs(self, job_id: str) -> str:
        return f"{self.meta}logs/{job_id}/"

    def probe(self, writer: str) -> str:
        return f"{self.meta}probe/{writer}"


@dataclass(frozen=True)
class Record:
    """One commit record: how a datum ended and which outputs it holds."""

    datum: str
    seq: int
    state: str
    hash: str = ""
    job: str = ""
    attempts: int = 0
    seconds: float = 0.0
    error: str = ""
    token: str = ""
    outputs: tuple[tuple[str, int], ...] = ()  # (path, size)
    inputs: str = "[]"  # the datum's inputs, as the ledger's job_datums keeps them
    ended: float = 0.0
    writer: str = ""

    def body(self) -> str:
        return json.dumps({"version": 1, "datum": self.datum, "seq": self.seq,
                           "state": self.state, "hash": self.hash, "job": self.job,
                           "attempts": self.attempts, "seconds": self.seconds,
                           "error": self.error, "token": self.token,
                           "outputs": [list(o) for o in self.outputs],
                           "inputs": self.inputs, "ended": self.ended, "writer": self.writer})

    @classmethod
    def parse(cls, body: str) -> Record:
        r = json.loads(body)
        return cls(str(r["datum"]), int(r["seq"]), str(r["state"]), str(r["hash"]),
                   str(r["job"]), int(r["attempts"]), float(r["seconds"]), str(r["error"]),
                   str(r["token"]), tuple((str(p), int(n)) for p, n in r["outputs"]),
                   str(r.get("inputs", "[]")), float(r.get("ended", 0.0)),
                   str(r.get("writer", "")))


@dataclass
class Snapshot:
    """What the bucket held when it was last read: records and blobs by datum."""

    seqs: dict[str, list[int]]  # datum -> its records' sequence numbers, ascending
    records: dict[str, Record]  # record key -> record (every newest one, and any older one)
    blobs: dict[str, dict[str, list[str]]]  # datum -> token -> blob keys

    def newest(self, layout: Layout, datum: str) -> Record | None:
        seqs = self.seqs.get(datum)
        return self.records[layout.record(datum, seqs[-1])] if seqs else None


class BucketRecords:
    """Reading a pipeline's records and jobs from the bucket into a ledger (its mirror)."""

    def __init__(self, bucket: OutputBucket, layout: Layout) -> None:
        self.bucket = bucket
        self.layout = layout

    def mirror(self, ledger: Ledger, shard: Shard | None = None, *,
               every_output: bool = True) -> Snapshot:
        """List records, blobs and jobs; fetch the records the ledger has not seen; make the
        ledger say what they say. Returns what was found, for recovery.

        The jobs and each datum's row in its job only of `shard` (None: an unsharded job), so
        a shard's ledger holds its own, as a shard's ledger in a shared directory does. Every
        datum's state and outputs too when `every_output` (a running shard's conflict check
        needs them all), else only the shard's own (a view `jobview` merges)."""
        owns = shard.owns if shard is not None else everyone
        mine = owns if not every_output else everyone
        snap = Snapshot({}, {}, {})
        listed: dict[str, str] = {}  # key -> ETag
        for key, _size, etag in self.bucket.list(self.layout.commits):
            datum, _, name = key[len(self.layout.commits):].partition("/")
            if not name.endswith(".json") or not name[:-5].isdigit():
                continue
            snap.seqs.setdefault(datum, []).append(int(name[:-5]))
            listed[key] = etag
        for seqs in snap.seqs.values():
            seqs.sort()
        for key, _size, _etag in self.bucket.list(self.layout.blobs):
            datum, _, rest = key[len(self.layout.blobs):].partition("/")
            token, _, _path = rest.partition("/")
            snap.blobs.setdefault(datum, {}).setdefault(token, []).append(key)
        cached = ledger.bucket_records()
        # Older records are needed only to finish an interrupted commit (recover).
        wanted = [self.layout.record(d, s) for d, seqs in snap.seqs.items() for s in seqs]
        known = {k for k in wanted if k in cached and cached[k][0] == listed[k]}
        missing = [key for key in wanted if key not in known]
        bodies = self.bucket.run_all(lambda k: self.bucket.get(k).decode(), missing)
        fetched = [(key, listed[key], body) for key, body in zip(missing, bodies, strict=True)]
        for key, _etag, body in [*((k, *cached[k]) for k in known), *fetched]:
            try:
                snap.records[key] = Record.parse(body)
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"commit record {self.bucket.url(key)} is damaged ({exc}); "
                                 "move it away only if you know the datum's outputs are gone "
                                 "too") from None
        newest = [snap.newest(self.layout, d) for d in snap.seqs]
        live = [r for r in newest if r is not None and r.state != DELETED]
        ledger.mirror(BucketMirror(
            dropped=[k for k in cached if k not in listed],
            fetched=fetched,
            datums=[(r.datum, r.hash, r.state, r.job) for r in live if mine(r.datum)],
            outputs=[(path, r.datum) for r in live if mine(r.datum) for path, _ in r.outputs],
            # A cached record's row in its job was written before the record was cached.
            job_datums=[(r.job, r.datum, r.hash, r.inputs, r.state, r.attempts, r.seconds,
                         r.error, len(r.outputs), r.ended) for r in live
                        if owns(r.datum) and self.layout.record(r.datum, r.seq) not in known],
            jobs=self._jobs(shard.key if shard is not None else "")))
        return snap

    def _jobs(self, shard: str) -> list[tuple[Any, ...]]:
        """The rows of the jobs `shard` ("": unsharded) ran; of each, the latest word of its
        writers (a job resumed on another machine has two)."""
        latest: dict[str, dict[str, Any]] = {}
        for job in self._job_objects():
            if job.get("shard", "") != shard:
                continue
            seen = latest.get(job["job_id"])
            if seen is None or job["updated"] > seen["updated"]:
                latest[job["job_id"]] = job
        return [(job_id, j.get("pipeline", self.layout.pipeline), j.get("spec_hash", ""),
                 j.get("salt", ""), float(j.get("started") or 0), j.get("ended"),
                 j.get("state", "running"),
                 *(int(j.get(k) or 0) for k in ("total", "skipped", "processed", "failed",
                                                "recovered")),
                 j.get("message", "")) for job_id, j in latest.items()]

    def _job_objects(self) -> list[dict[str, Any]]:
        keys = [key for key, _, _ in self.bucket.list(self.layout.jobs())]
        jobs = []
        for key, body in zip(keys, self.bucket.run_all(self.bucket.get, keys), strict=True):
            try:
                job = json.loads(body)
                job["job_id"] = str(job["job_id"])
                job["updated"] = float(job["updated"])
                jobs.append(job)
            except (ValueError, KeyError, TypeError):
                log.warning("skipping damaged job record %s", self.bucket.url(key))
        return jobs

    def shards(self) -> set[Shard | None]:
        """The shards (None: unsharded runs) whose jobs the bucket records."""
        found: set[Shard | None] = set()
        for job in self._job_objects():
            key = str(job.get("shard", ""))
            match = _SHARD_KEY.fullmatch(key)
            found.add(Shard(int(match[1]), int(match[2])) if match else None)
        return found

    def logs(self, job_id: str, into: str) -> list[str]:
        """Download every writer's log of `job_id` into the directory `into`; their paths."""
        paths = []
        for n, (key, _size, _etag) in enumerate(self.bucket.list(self.layout.logs(job_id))):
            path = os.path.join(into, f"{n}.jsonl")
            with open(path, "wb") as f:
                f.write(self.bucket.get(key))
            paths.append(path)
        return paths


def records_of(url: str, pipeline: str) -> BucketRecords:
    """The records of pipeline `pipeline` at the data location `url` (read only)."""
    from pfsmount.store import s3

    bucket = s3.bucket_for(url)
    return BucketRecords(OutputBucket(bucket), Layout(bucket.location.prefix, pipeline))


def check_writable(url: str, pipeline: str) -> None:
    """StoreError, naming the fix, unless the output repo at `url` can be written (one
    probe object written and deleted); run before anything mounts."""
    from pfsmount.store import s3

    bucket = s3.bucket_for(url)
    OutputBucket(bucket).check_writable(
        Layout(bucket.location.prefix, pipeline).probe(uuid.uuid4().hex[:16]))


def bucket_view(url: str, state_dir: str, pipeline: str) -> str:
    """Mirror the bucket's records of `pipeline` into ledgers laid out as a shared data
    directory's (one per shard that ran, `Workspace`), below `state_dir`; returns that
    directory, for `jobview.JobRecords` (list-jobs, inspect-job, logs, `pfsmount dag`).
    StoreError or LedgerError when the bucket or a ledger cannot be read."""
    from pfsmount.workspace import WORK_DIR, Workspace

    # A dot name: no pipeline's workspace can be called so.
    view = os.path.join(state_dir, WORK_DIR, ".bucket")
    records = records_of(url, pipeline)
    for shard in records.shards() or {None}:
        workspace = Workspace.of(view, pipeline, shard)
        workspace.create()
        ledger = Ledger(workspace.ledger_path)
        try:
            records.mirror(ledger, workspace.shard, every_output=False)
        finally:
            ledger.close()
    return view


@dataclass
class S3OutputRepo(OutputRepo):
    """A pipeline's output repo at `location` (s3://BUCKET[/PREFIX]), committed datum by
    datum through records in the bucket; `data_dir` is only the local state (staging,
    the ledger mirror, this writer's log)."""

    location: str = ""
    writer: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    owns: Callable[[str], bool] = everyone  # datums this writer may commit, finish or forget

    def _open_repo(self) -> None:
        from pfsmount.store import s3

        bucket = s3.bucket_for(self.location)
        self.bucket = OutputBucket(bucket)
        self.layout = Layout(bucket.location.prefix, self.pipeline)
        self.records = BucketRecords(self.bucket, self.layout)
        self.repo_dir = self.bucket.url(self.layout.outputs)
        self._seqs: dict[str, list[int]] = {}
        self._newest: dict[str, Record] = {}
        self._inputs: dict[str, str] = {}
        self._etags: dict[str, str] = {}  # record key -> ETag, of records written here
        self._seq_lock = threading.Lock()
        self._log_path: str | None = None
        self._log_sent = 0.0
        if self.shard is not None:
            # Every shard reads every record, but commits, finishes and forgets its own only.
            self.owns = self.shard.owns
            self.writer = f"{self.shard.key}-{self.writer}"

    # ----- start of a run -------------------------------------------------------------

    def recover(self) -> int:
        """Mirror the bucket's records into the ledger, and finish what a crash (of any
        machine) left half done; returns how many datums needed it."""
        stale = self.ledger.pending_intents()
        if stale:  # the bucket's records are the truth here, not the local redo log
            self.ledger.clear_intents([seq for seq, _ in stale])
        snap = self.records.mirror(self.ledger, self.shard)
        self._seqs = {d: list(seqs) for d, seqs in snap.seqs.items()}
        self._newest = {d: r for d in snap.seqs
                        if (r := snap.newest(self.layout, d)) is not None}
        taken = self._owned_paths()
        unfinished = sorted(d for d in set(snap.seqs) | set(snap.blobs)
                            if self.owns(d) and (len(snap.seqs.get(d, ())) > 1 or d in snap.blobs))
        for datum in unfinished:
            self._finish(datum, snap, taken)
        self._index = None
        return len(unfinished)

    def _owned_paths(self) -> set[str]:
        return {path for r in self._newest.values() if r.state != DELETED
                for path, _ in r.outputs}

    def _finish(self, datum: str, snap: Snapshot, taken: set[str]) -> None:
        """Step 3 of a commit, again: idempotent, so it may be cut short and redone."""
        newest = snap.newest(self.layout, datum)
        tokens = snap.blobs.get(datum, {})
        if newest is not None and newest.token in tokens:
            sizes = dict(newest.outputs)
            start = len(self.layout.blob(datum, newest.token, ""))
            self.bucket.run_all(
                lambda key: self.bucket.copy(key, self.layout.output(key[start:]),
                                             sizes.get(key[start:], 0)),
                tokens[newest.token])
        older = [snap.records[self.layout.record(datum, s)] for s in snap.seqs.get(datum, [])[:-1]]
        gone = {path for r in older for path, _ in r.outputs} - taken
        self.bucket.delete(self.layout.output(p) for p in gone)
        self.bucket.delete(key for keys in tokens.values() for key in keys)
        self.bucket.delete(self.layout.record(datum, r.seq) for r in older)
        if newest is not None and newest.state == DELETED:
            self.bucket.delete([self.layout.record(datum, newest.seq)])
            self._seqs.pop(datum, None)
            self._newest.pop(datum, None)
        elif newest is not None:
            self._seqs[datum] = [newest.seq]
        if older or (newest is not None and newest.token in tokens):
            log.info("finished the commit of datum %s that an earlier run left half done",
                     datum[:12])
        else:
            log.info("removed the uploads of datum %s that an earlier run never committed",
                     datum[:12])

    def forget_missing(self, datum_ids: Iterable[str]) -> int:
        """Tombstone the datums (this writer owns) that no longer exist, then delete their
        outputs and records; returns how many datums."""
        with self._flush_lock:
            known = set(datum_ids)
            return self._forget(sorted(d for d in self.ledger.known_datums() - known
                                       if self.owns(d)))

    def forget_unseen(self) -> int:
        """`forget_missing` of the recorded datums the listing did not mark seen
        (`Ledger.mark_seen`). The mirror holds every shard's datums: only this writer's
        own go. Runs as a group commit of its own, as the local repo's does."""
        with self._flush_lock:
            return self._forget([d for d in self.ledger.unseen_datums() if self.owns(d)])

    def _forget(self, gone: list[str]) -> int:
        if not gone:
            return 0
        tombs = [Record(d, self._next_seq(d), DELETED, writer=self.writer,
                        ended=time.time()) for d in gone]
        problems = [p for p in self.bucket.run_all(self._try_record, tombs) if p is not None]
        if problems:
            raise BucketWriteError(f"cannot record that a datum no longer exists: {problems[0]}")
        _crash_point("s3-tombstoned")
        intents = [Intent("del", path) for d in gone for path in self.ledger.outputs_of(d)]
        self.ledger.clear_intents(self.ledger.forget_datums(gone, intents))
        with self._lock:
            if self._index is not None:
                # Updated, not dropped: the job may be running, and a reload could land on
                # the trio thread.
                for it in intents:
                    self._index.remove(it.path)
        for d in gone:
            self._newest.pop(d, None)
        taken = self._owned_paths()
        self.bucket.delete(self.layout.output(it.path) for it in intents
                           if it.path not in taken)
        # The tombstones last: until they go, a crash here is finished by `recover`.
        self.bucket.delete(self.layout.record(d, s) for d in gone for s in self._seqs[d][:-1])
        self.bucket.delete(self.layout.record(t.datum, t.seq) for t in tombs)
        for d in gone:
            self._seqs.pop(d, None)
        return len(gone)

    def untracked(self) -> list[str]:
        """Objects under the output prefix that no datum wrote."""
        with self._lock:
            owned = self._outputs()
            return [display(key[len(self.layout.outputs):])
                    for key, _, _ in self.bucket.list(self.layout.outputs)
                    if key[len(self.layout.outputs):] not in owned]

    def register_later(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        # Called once per planned batch: the inputs of every batch so far are kept.
        with self._lock:
            self._inputs.update((row[0], row[2]) for row in rows)
        super().register_later(rows)

    # ----- the job's record in the bucket ------------------------------------------------

    def publish_job(self, job: dict[str, Any]) -> None:
        body = json.dumps({**job, "updated": time.time(), "writer": self.writer,
                           "shard": self.shard.key if self.shard is not None else ""})
        try:
            self.bucket.put(self.layout.job(job["job_id"], self.writer), body.encode())
        except BucketWriteError as exc:
            log.warning("the job's record could not be written to the bucket (%s); other "
                        "machines see this job only once it is", exc)

    def publish_log(self, job_id: str, path: str, *, final: bool) -> None:
        self._log_path = path
        self._log_job = job_id
        if final or time.monotonic() - self._log_sent >= LOG_INTERVAL:
            self._send_log()

    def _send_log(self) -> None:
        self._log_sent = time.monotonic()
        if self._log_path is None or not os.path.exists(self._log_path):
            return
        try:
            self.bucket.upload(f"{self.layout.logs(self._log_job)}{self.writer}.jsonl",
                               self._log_path)
        except BucketWriteError as exc:
            log.warning("the job log could not be copied to the bucket (%s); `pfsmount logs` "
                        "on this machine still shows it", exc)

    def shard_conflicts(self) -> list[str]:
        """Output paths of datums of two shards, from every shard's newest records (the
        bucket is what the shards share); empty when the job is not sharded."""
        if self.shard is None:
            return []
        from pfsmount.shardjob import conflicts

        snap = self.records.mirror(self.ledger, self.shard)
        with self._lock:
            self._index = None  # the mirror rewrote the ledger's owners
        count = self.shard.count
        owned: dict[Shard, dict[str, str]] = {}
        for datum in snap.seqs:
            r = snap.newest(self.layout, datum)
            if r is not None and r.state != DELETED and r.outputs:
                shard = Shard(shard_of(datum, count), count)
                owned.setdefault(shard, {}).update((path, datum) for path, _ in r.outputs)
        return conflicts(owned) if len(owned) > 1 else []

    def flush(self) -> list[tuple[str, str]]:
        failures = super().flush()
        if self._log_path is not None and time.monotonic() - self._log_sent >= LOG_INTERVAL:
            self._send_log()
        return failures

    # ----- committing -----------------------------------------------------------------------

    def _obstacle(self, e: _Ending, seen: dict[tuple[str, ...], str | None]) -> str | None:
        """Why a successful ending's files cannot be objects of this bucket, or None."""
        for it in e.intents:
            if it.op != "add":
                continue
            try:
                size = len(self.layout.output(it.path).encode("utf-8"))
            except UnicodeEncodeError:
                return (f"output path /{display(it.path)} is not UTF-8, and an S3 key must be "
                        "(write UTF-8 names, or keep outputs locally with --output-dir)")
            if size > MAX_KEY_BYTES:
                return (f"output path /{display(it.path)} makes an S3 key longer than "
                        f"{MAX_KEY_BYTES} bytes (write a shorter name)")
            if os.path.islink(it.source):
                return (f"output path /{display(it.path)} is a symlink ("
                        f"{display(os.readlink(it.source))}), and an output repo in S3 holds "
                        "files only (write the file itself, or keep outputs locally with "
                        "--output-dir)")
        return None

    def _commit(self, batch: Sequence[_Ending]) -> None:
        tokens = {e.datum_id: uuid.uuid4().hex[:16] for e in batch}
        adds = [(e.datum_id, it) for e in batch for it in e.intents if it.op == "add"]
        try:
            sizes = self.bucket.run_all(self._upload, [
                (self.layout.blob(d, tokens[d], it.path), it.source) for d, it in adds])
        except BucketWriteError as exc:
            raise _NotRecorded(str(exc)) from None
        size_of = {(d, it.path): n for (d, it), n in zip(adds, sizes, strict=True)}
        _crash_point("s3-uploaded")
        records = [self._record(e, tokens[e.datum_id], size_of) for e in batch]
        problems = self.bucket.run_all(self._try_record, records)
        done = [(e, r) for e, r, p in zip(batch, records, problems, strict=True) if p is None]
        _crash_point("s3-recorded")
        if done:
            self._mirror_endings(done)
            self._index_endings([e for e, _ in done])
            self._place(done)
        failed = {e.datum_id: p for e, p in zip(batch, problems, strict=True) if p is not None}
        if failed:
            # No record names these blobs: they would only wait for the next `recover`.
            orphans = [self.layout.blob(r.datum, r.token, path) for r in records
                       if r.datum in failed for path, _ in r.outputs]
            try:
                self.bucket.delete(orphans)
            except BucketWriteError as exc:
                log.warning("uncommitted uploads stay until the next run (%s)", exc)
            # Each datum's record was tried on its own already: no point in trying again.
            raise _NotRecorded(next(iter(failed.values())),
                               frozenset(e.datum_id for e, _ in done), failed)

    def _upload(self, job: tuple[str, str]) -> int:
        key, source = job
        self.bucket.upload(key, source)
        return os.lstat(source).st_size

    def _record(self, e: _Ending, token: str, sizes: dict[tuple[str, str], int]) -> Record:
        outputs = tuple((it.path, sizes[e.datum_id, it.path]) for it in e.intents
                        if it.op == "add")
        return Record(e.datum_id, self._next_seq(e.datum_id), e.state, self._hash(e.datum_id),
                      self.job_id, e.attempts, e.seconds, e.error, token if outputs else "",
                      outputs, self._inputs.get(e.datum_id, "[]"), time.time(), self.writer)

    def _next_seq(self, datum: str) -> int:
        with self._seq_lock:
            seqs = self._seqs.setdefault(datum, [])
            seq = seqs[-1] + 1 if seqs else 0
            seqs.append(seq)
            return seq

    def _try_record(self, record: Record) -> str | None:
        try:
            self._put_record(record)
        except BucketWriteError as exc:
            return str(exc)
        except AlreadyExists as exc:
            return (f"its commit record {exc} was written by someone else meanwhile (is this "
                    "pipeline running on another machine over the same bucket?)")
        return None

    def _put_record(self, record: Record) -> None:
        key = self.layout.record(record.datum, record.seq)
        # From the write pool's threads: one dict item each, which the GIL keeps whole.
        self._etags[key] = self.bucket.put(key, record.body().encode(), create=True)

    def _mirror_endings(self, done: Sequence[tuple[_Ending, Record]]) -> None:
        """The ledger is only a cache here: a failure to write it costs a fetch next time."""
        try:
            seqs = self.ledger.finish_datums(self.job_id, [
                DatumEnding(e.datum_id, r.hash, e.state, e.attempts, e.seconds, e.error,
                            e.intents) for e, r in done])
            self.ledger.clear_intents(seqs)
            keys = [self.layout.record(r.datum, r.seq) for _, r in done]
            etags = [self._etags.pop(key, "") for key in keys]
            # Without its ETag a record cannot be told from a later one of the same key.
            self.ledger.cache_bucket_records([
                (key, etag, r.body()) for key, etag, (_, r) in zip(keys, etags, done, strict=True)
                if etag])
        except LedgerError as exc:
            log.warning("the local ledger could not mirror %d committed datum(s) (%s); the "
                        "next run reads them from the bucket", len(done), exc)

    def _place(self, done: Sequence[tuple[_Ending, Record]]) -> None:
        """Step 3: make the output prefix say what the new records say."""
        with self._lock:
            owned = self._outputs()
            dropped = [self.layout.output(it.path) for e, _ in done for it in e.intents
                       if it.op == "del" and it.path not in owned]
        copies = [(self.layout.blob(r.datum, r.token, path), self.layout.output(path), size)
                  for _, r in done for path, size in r.outputs]
        try:
            self.bucket.delete(dropped)
            self.bucket.run_all(lambda c: self.bucket.copy(*c), copies)
            _crash_point("s3-copied")
            self.bucket.delete(blob for blob, _, _ in copies)
            older = []
            for _, r in done:
                with self._seq_lock:
                    seqs = self._seqs.get(r.datum, [])
                    older += [self.layout.record(r.datum, s) for s in seqs if s < r.seq]
                    self._seqs[r.datum] = [s for s in seqs if s >= r.seq]
                self._newest[r.datum] = r
            self.bucket.delete(older)
        except BucketWriteError as exc:
            log.error("committed datums' outputs are not all in place yet (%s); the next run "
                      "finishes it from their records", exc)
        for e, _ in done:
            if e.staging:
                shutil.rmtree(e.staging, ignore_errors=True)
