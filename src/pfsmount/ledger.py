"""The durable record of a pipeline's jobs, datums and output files (SQLite).

One database per pipeline, inside the data directory:
`DATA/.pfsmount/<pipeline>/ledger.sqlite`. It answers three questions:

- which datums are done, and with which hash (incremental runs skip a datum whose hash is
  unchanged and that was PROCESSED);
- which file of the output repo belongs to which datum (conflicts, and removing the outputs
  of datums that changed, failed, or no longer exist);
- which job was interrupted (resume).

Changing the output repo is a redo log: the intended file operations of a datum and its new
state are written in one transaction *before* any file moves; the operations are then
applied and the intent deleted. After a crash at any instant, `recover()` re-applies what is
left, so the output repo ends up holding exactly the outputs the ledger says exist.

Output paths are names the user code chose, so they are bytes on Linux and may not be UTF-8.
In memory they are `str` with surrogateescape (what `os.fsdecode` gives); in the `outputs` and
`intents` tables a path that is valid UTF-8 is TEXT, as it always was, and any other is stored
as a BLOB of its raw bytes (`_db_path`). SQLite keeps a BLOB as it is in a TEXT column, and the
choice depends only on the path, so one path always has one stored form: no migration needed.

The database and its -wal/-shm files are readable by their owner only (SQLite gives the
-wal/-shm the main file's mode): they hold names and error messages from the user code.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, spec_hash TEXT NOT NULL,
    salt TEXT NOT NULL, started REAL NOT NULL, ended REAL, state TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,
    processed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    recovered INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS job_datums (
    job_id TEXT NOT NULL, datum_id TEXT NOT NULL, hash TEXT NOT NULL, inputs TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, seconds REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', outputs INTEGER NOT NULL DEFAULT 0, ended REAL,
    PRIMARY KEY (job_id, datum_id)
);
CREATE TABLE IF NOT EXISTS datums (
    datum_id TEXT PRIMARY KEY, hash TEXT NOT NULL, state TEXT NOT NULL, job_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (
    path TEXT PRIMARY KEY, datum_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outputs_by_datum ON outputs (datum_id);
-- Resuming a job asks which of its datums are done: without this, a scan of all of them.
CREATE INDEX IF NOT EXISTS job_datums_done ON job_datums (job_id)
    WHERE state IN ('success', 'failed', 'recovered', 'skipped');
-- inspect-job and logs --failed ask for a job's troubles: not a scan of all its datums.
CREATE INDEX IF NOT EXISTS job_datums_troubled ON job_datums (job_id)
    WHERE state IN ('failed', 'recovered');
-- S3 outputs: the bucket's commit records this ledger mirrors (a key may be written again
-- after its record was deleted, so a cached body is good for its ETag only).
CREATE TABLE IF NOT EXISTS record_cache (
    key TEXT PRIMARY KEY, etag TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, datum_id TEXT NOT NULL, op TEXT NOT NULL,
    path TEXT NOT NULL, source TEXT NOT NULL DEFAULT ''
);
"""

RUNNING = "running"
DONE_STATES = ("success", "failed", "recovered", "skipped")
_DONE_SQL = ", ".join(f"'{state}'" for state in DONE_STATES)
# Ids per `IN (...)` lookup: well under SQLite's default limit of 32,766 variables.
LOOKUP_BATCH = 500


class LedgerError(Exception):
    """The ledger cannot be used (corrupt, full disk, ...); the message says what to do."""


@dataclass(frozen=True)
class Intent:
    """One file operation on the output repo: add `path` (renamed from `source`) or delete it."""

    op: str  # "add" or "del"
    path: str  # relative to the output repo
    source: str = ""  # absolute staging path, for "add"


@dataclass(frozen=True)
class DatumEnding:
    """How one datum ended, and what that changes in the output repo."""

    datum_id: str
    datum_hash: str
    state: str
    attempts: int
    seconds: float
    error: str
    intents: Sequence[Intent]


class Ledger:
    """Thread-safe access to one pipeline's ledger database."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            _make_private(path)
        except OSError as exc:
            raise LedgerError(f"ledger {path} cannot be opened: {exc.strerror}") from None
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit that returned is on disk, which the redo log relies on.
            self._db.execute("PRAGMA synchronous=FULL")
            # Up to 64 MiB of pages (default 2 MiB): registering 100,000 datums inserts into
            # an index keyed by random ids, twice as fast when the index stays in memory.
            self._db.execute("PRAGMA cache_size=-65536")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {path} cannot be opened: {exc} (if it is corrupt, move it "
                              "away: the next run then processes every datum again)") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ----- small helpers --------------------------------------------------------------

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                # A ledger cut short (a copy, a full disk) opens fine and fails on first read.
                raise LedgerError(_describe(exc, self.path)) from None

    def _transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run `statements` in one transaction; returns each statement's lastrowid."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                rowids = [self._db.execute(sql, tuple(args)).lastrowid or 0
                          for sql, args in statements]
                self._db.execute("COMMIT")
                return rowids
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise LedgerError(_describe(exc, self.path)) from None

    # ----- jobs -----------------------------------------------------------------------

    def interrupted_job(self) -> dict[str, Any] | None:
        """The last job if it never finished (pfsmount or the machine died, or it was killed)."""
        rows = self._query("SELECT job_id, state FROM jobs ORDER BY started DESC LIMIT 1")
        if rows and rows[0][1] in (RUNNING, "killed"):
            return self.job(rows[0][0])
        return None

    def start_job(self, job_id: str, pipeline: str, spec_hash: str, salt: str,
                  total: int) -> None:
        self._transaction([(
            "INSERT INTO jobs (job_id, pipeline, spec_hash, salt, started, state, total) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
            "state = excluded.state, ended = NULL, total = excluded.total, "
            "spec_hash = excluded.spec_hash, salt = excluded.salt",
            (job_id, pipeline, spec_hash, salt, time.time(), RUNNING, total),
        )])

    def set_total(self, job_id: str, total: int) -> None:
        """The job's number of datums, once the listing has produced them all."""
        self._transaction([("UPDATE jobs SET total = ? WHERE job_id = ?", (total, job_id))])

    def end_job(self, job_id: str, state: str, message: str = "") -> None:
        c = self._counts(job_id)
        self._transaction([(
            "UPDATE jobs SET ended = ?, state = ?, skipped = ?, processed = ?, failed = ?, "
            "recovered = ?, message = ? WHERE job_id = ?",
            (time.time(), state, c["skipped"], c["processed"], c["failed"], c["recovered"],
             message, job_id),
        )])

    def forget_job(self, job_id: str) -> None:
        """Drop a job and its datum rows, to enter a sharded job again under its name
        (`shardjob.choose_job`); what each datum last became and its outputs stay."""
        self._transaction([("DELETE FROM job_datums WHERE job_id = ?", (job_id,)),
                           ("DELETE FROM jobs WHERE job_id = ?", (job_id,))])

    def jobs(self) -> list[dict[str, Any]]:
        cols = ("job_id", "pipeline", "started", "ended", "state", "total", "skipped",
                "processed", "failed", "recovered", "message")
        rows = self._query(f"SELECT {', '.join(cols)} FROM jobs ORDER BY started")
        jobs = [dict(zip(cols, row, strict=True)) for row in rows]
        for job in jobs:
            if job["state"] == RUNNING:
                # Counted only when a job ends; one that is running (or whose pfsmount died)
                # shows what its datums have reached so far.
                job.update(self._counts(job["job_id"]))
        return jobs

    def _counts(self, job_id: str) -> dict[str, int]:
        by_state = dict(self._query(
            "SELECT state, COUNT(*) FROM job_datums WHERE job_id = ? GROUP BY state", (job_id,)))
        return {"skipped": by_state.get("skipped", 0), "processed": by_state.get("success", 0),
                "failed": by_state.get("failed", 0), "recovered": by_state.get("recovered", 0)}

    def job(self, job_prefix: str) -> dict[str, Any] | None:
        matches = [j for j in self.jobs() if j["job_id"].startswith(job_prefix)]
        return matches[-1] if matches else None

    def job_datums(self, job_id: str) -> list[dict[str, Any]]:
        return self._datum_records("job_id = ?", (job_id,))

    def _datum_records(self, where: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        cols = ("datum_id", "hash", "inputs", "state", "attempts", "seconds", "error", "outputs")
        rows = self._query(f"SELECT {', '.join(cols)} FROM job_datums WHERE {where} "
                           "ORDER BY rowid", args)
        out = []
        for row in rows:
            rec = dict(zip(cols, row, strict=True))
            rec["inputs"] = json.loads(rec["inputs"])
            out.append(rec)
        return out

    def done_in_job(self, job_id: str) -> dict[str, str]:
        """Datums that reached a final state in `job_id`: id -> state."""
        # The states are spelled out, not bound, so SQLite can use the partial index.
        return dict(self._query(
            f"SELECT datum_id, state FROM job_datums WHERE job_id = ? AND state IN ({_DONE_SQL})",
            (job_id,)))

    def state_counts(self, job_id: str) -> dict[str, int]:
        """How many of the job's datums are in each state (its rows only, by the key)."""
        return dict(self._query(
            "SELECT state, COUNT(*) FROM job_datums WHERE job_id = ? GROUP BY state", (job_id,)))

    def attempt_seconds(self, job_id: str) -> tuple[int, float, float, float]:
        """(ended datums, median, max and total seconds) of the job's ended datums."""
        where = f"job_id = ? AND state IN ({_DONE_SQL}) AND state != 'skipped'"
        (n, high, total), = self._query(
            f"SELECT COUNT(*), MAX(seconds), SUM(seconds) FROM job_datums WHERE {where}",
            (job_id,))
        if not n:
            return 0, 0.0, 0.0, 0.0
        (median,), = self._query(f"SELECT seconds FROM job_datums WHERE {where} "
                                 "ORDER BY seconds LIMIT 1 OFFSET ?", (job_id, n // 2))
        return n, median, high, total

    def ended_seconds(self, job_id: str) -> Iterator[float]:
        """The seconds of the job's ended datums, shortest first (what `attempt_seconds`
        counts; merged over shards by `jobview.JobRecords`)."""
        where = f"job_id = ? AND state IN ({_DONE_SQL}) AND state != 'skipped'"
        for (seconds,) in self._query(f"SELECT seconds FROM job_datums WHERE {where} "
                                      "ORDER BY seconds", (job_id,)):
            yield seconds

    def troubled_datums(self, job_id: str) -> list[dict[str, Any]]:
        """The job's FAILED and RECOVERED datums, as `job_datums` records, in job order."""
        return self._datum_records("job_id = ? AND state IN ('failed', 'recovered')", (job_id,))

    def datum_ids_in_job(self, job_id: str, prefix: str) -> list[str]:
        """The job's datum ids starting with `prefix` (a range of the primary key)."""
        return [row[0] for row in self._query(
            "SELECT datum_id FROM job_datums WHERE job_id = ? AND datum_id >= ? "
            "AND datum_id < ?", (job_id, prefix, prefix + "\U0010ffff"))]

    def troubled_in_job(self, job_id: str) -> list[tuple[str, str, int, str]]:
        """(datum id, state, attempts, error) of the job's FAILED and RECOVERED datums."""
        return [tuple(row) for row in self._query(  # type: ignore[misc]
            f"SELECT datum_id, state, attempts, error FROM job_datums WHERE job_id = ? "
            f"AND state IN ({_DONE_SQL}) AND state IN ('failed', 'recovered') ORDER BY rowid",
            (job_id,))]

    # ----- datums ---------------------------------------------------------------------

    def processed_hashes(self) -> dict[str, str]:
        """Datum id -> hash, for every datum whose latest outcome was PROCESSED."""
        return dict(self._query("SELECT datum_id, hash FROM datums WHERE state = 'success'"))

    def has_datums(self) -> bool:
        """Whether any datum is recorded (an earlier job ended some)."""
        return bool(self._query("SELECT 1 FROM datums LIMIT 1"))

    def known_datums(self) -> set[str]:
        return {row[0] for row in self._query("SELECT datum_id FROM datums")}

    def processed_hashes_of(self, datum_ids: Sequence[str]) -> dict[str, str]:
        """`processed_hashes` for these ids only: indexed lookups, never the whole table."""
        return self._lookup("SELECT datum_id, hash FROM datums WHERE state = 'success' "
                            "AND datum_id IN ({})", (), datum_ids)

    def done_in_job_of(self, job_id: str, datum_ids: Sequence[str]) -> dict[str, str]:
        """`done_in_job` for these ids only."""
        # Looked up by the primary key and filtered here: with the state in the query,
        # SQLite prefers the partial index and scans every finished datum of the job for
        # each batch (quadratic over a resumed job of millions).
        states = self._lookup("SELECT datum_id, state FROM job_datums WHERE job_id = ? AND "
                              "datum_id IN ({})", (job_id,), datum_ids)
        return {d: state for d, state in states.items() if state in DONE_STATES}

    def job_datum_states_of(self, job_id: str, datum_ids: Sequence[str]
                            ) -> dict[str, tuple[str, int, str]]:
        """(state, attempts, error) in `job_id` of these datums (those it holds)."""
        rows = self._lookup("SELECT datum_id, state, attempts, error FROM job_datums "
                            "WHERE job_id = ? AND datum_id IN ({})", (job_id,), datum_ids,
                            rows=True)
        return rows

    def _lookup(self, sql: str, args: Sequence[Any], ids: Sequence[str], *,
                rows: bool = False) -> dict[str, Any]:
        """id -> the second column (or, with `rows`, the rest of the row) for these ids."""
        found: dict[str, Any] = {}
        for i in range(0, len(ids), LOOKUP_BATCH):
            batch = ids[i:i + LOOKUP_BATCH]
            for row in self._query(sql.format(", ".join("?" * len(batch))), (*args, *batch)):
                found[row[0]] = tuple(row[1:]) if rows else row[1]
        return found

    # Deleted-datum detection without holding every id: the ids a job's input produces are
    # marked in a temporary table (this connection's own), then the recorded ones not marked
    # are swept.

    def mark_seen(self, datum_ids: Iterable[str]) -> None:
        """Remember that the input still produces these datums (see `unseen_datums`)."""
        with self._lock:
            try:
                self._db.execute("CREATE TEMP TABLE IF NOT EXISTS seen "
                                 "(datum_id TEXT PRIMARY KEY) WITHOUT ROWID")
                self._db.executemany("INSERT OR IGNORE INTO temp.seen VALUES (?)",
                                     ((d,) for d in datum_ids))
            except sqlite3.Error as exc:
                raise LedgerError(_describe(exc, self.path)) from None

    def unseen_datums(self) -> list[str]:
        """Recorded datums that were not marked seen, sorted; then forgets the marks."""
        self.mark_seen(())
        gone = [row[0] for row in self._query(
            "SELECT datum_id FROM datums WHERE datum_id NOT IN (SELECT datum_id FROM temp.seen) "
            "ORDER BY datum_id")]
        self._query("DELETE FROM temp.seen")
        return gone

    def record_datums(self, job_id: str, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """Register the job's datums: (datum id, hash, inputs json, state)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                # One executemany: 100,000 rows in a fraction of the time of single inserts.
                self._db.executemany(
                    "INSERT INTO job_datums (job_id, datum_id, hash, inputs, state) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(job_id, datum_id) DO NOTHING",
                    ((job_id, *row) for row in rows))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise LedgerError(_describe(exc, self.path)) from None

    def outputs_of(self, datum_id: str) -> list[str]:
        return sorted(_py_path(r[0]) for r in self._query(
            "SELECT path FROM outputs WHERE datum_id = ?", (datum_id,)))

    def all_outputs(self) -> dict[str, str]:
        return {_py_path(path): datum_id
                for path, datum_id in self._query("SELECT path, datum_id FROM outputs")}

    def finish_datums(self, job_id: str, endings: Sequence[DatumEnding]) -> list[int]:
        """One transaction for a group of datums: new states, output files, and the redo log.

        Returns the sequence numbers of the intents it logged, for `clear_intents`.
        """
        stmts: list[tuple[str, Sequence[Any]]] = []
        now = time.time()
        for e in endings:
            stmts += [
                ("UPDATE job_datums SET state = ?, attempts = ?, seconds = ?, error = ?, "
                 "outputs = ?, ended = ?, hash = ? WHERE job_id = ? AND datum_id = ?",
                 (e.state, e.attempts, e.seconds, e.error,
                  sum(1 for i in e.intents if i.op == "add"), now, e.datum_hash, job_id,
                  e.datum_id)),
                ("INSERT INTO datums (datum_id, hash, state, job_id) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT(datum_id) DO UPDATE SET hash = excluded.hash, "
                 "state = excluded.state, job_id = excluded.job_id",
                 (e.datum_id, e.datum_hash, e.state, job_id)),
            ]
            stmts += self._intent_statements(e.datum_id, e.intents)
        return _intent_seqs(stmts, self._transaction(stmts))

    def forget_datums(self, datum_ids: Sequence[str], intents: Sequence[Intent]) -> list[int]:
        """Datums that no longer exist: drop them, and log the removal of their outputs.

        Returns the sequence numbers of the intents it logged, for `clear_intents`.
        """
        stmts: list[tuple[str, Sequence[Any]]] = [
            ("DELETE FROM datums WHERE datum_id = ?", (d,)) for d in datum_ids]
        stmts += self._intent_statements("", intents)
        return _intent_seqs(stmts, self._transaction(stmts))

    @staticmethod
    def _intent_statements(datum_id: str, intents: Sequence[Intent]
                           ) -> list[tuple[str, Sequence[Any]]]:
        stmts: list[tuple[str, Sequence[Any]]] = []
        for it in intents:
            path = _db_path(it.path)
            if it.op == "add":
                stmts.append(("INSERT INTO outputs (path, datum_id) VALUES (?, ?) "
                              "ON CONFLICT(path) DO UPDATE SET datum_id = excluded.datum_id",
                              (path, datum_id)))
            else:
                stmts.append(("DELETE FROM outputs WHERE path = ?", (path,)))
            stmts.append((_INSERT_INTENT, (datum_id, it.op, path, _db_path(it.source))))
        return stmts

    def pending_intents(self) -> list[tuple[int, Intent]]:
        return [(seq, Intent(op, _py_path(path), _py_path(source)))
                for seq, op, path, source in self._query(
                    "SELECT seq, op, path, source FROM intents ORDER BY seq")]

    def clear_intents(self, seqs: Sequence[int]) -> None:
        """Delete the intents numbered `seqs` (applied and synced by their owner).

        By number, never "everything up to": another group commit's intents, logged later
        but not applied yet, must stay until that commit has applied them.
        """
        if not seqs:
            return
        low, high = min(seqs), max(seqs)
        if high - low + 1 == len(set(seqs)):
            # One transaction's intents are numbered without gaps: one range is exactly them.
            self._transaction([("DELETE FROM intents WHERE seq BETWEEN ? AND ?", (low, high))])
        else:
            self._transaction([("DELETE FROM intents WHERE seq = ?", (seq,)) for seq in seqs])


    # ----- a mirror of an output repo in a bucket (S3 outputs) -----------------------------

    def bucket_records(self) -> dict[str, tuple[str, str]]:
        """The commit records already fetched from the bucket: key -> (ETag, JSON body)."""
        return {key: (etag, body) for key, etag, body in
                self._query("SELECT key, etag, body FROM record_cache")}

    def cache_bucket_records(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """Remember (key, ETag, body) of records this process wrote, so no later sync
        fetches them."""
        self._transaction([("INSERT OR REPLACE INTO record_cache (key, etag, body) "
                            "VALUES (?, ?, ?)", row) for row in rows])

    def mirror(self, m: BucketMirror) -> None:
        """Make the ledger say what the bucket's records say, in one transaction.

        The bucket is the truth: `datums` and `outputs` are replaced, the jobs and each
        recorded datum's row in its job are inserted or updated, and the record cache
        follows the bucket's listing.
        """
        stmts: list[tuple[str, Sequence[Any]]] = [
            ("DELETE FROM record_cache WHERE key = ?", (key,)) for key in m.dropped]
        stmts += [("INSERT OR REPLACE INTO record_cache (key, etag, body) VALUES (?, ?, ?)",
                   row) for row in m.fetched]
        stmts += [("DELETE FROM datums", ()), ("DELETE FROM outputs", ())]
        stmts += [("INSERT INTO datums (datum_id, hash, state, job_id) VALUES (?, ?, ?, ?)",
                   row) for row in m.datums]
        stmts += [("INSERT OR REPLACE INTO outputs (path, datum_id) VALUES (?, ?)",
                   (_db_path(path), datum_id)) for path, datum_id in m.outputs]
        stmts += [(
            "INSERT INTO job_datums (job_id, datum_id, hash, inputs, state, attempts, seconds, "
            "error, outputs, ended) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(job_id, datum_id) DO UPDATE SET hash = excluded.hash, "
            "state = excluded.state, attempts = excluded.attempts, seconds = excluded.seconds, "
            "error = excluded.error, outputs = excluded.outputs, ended = excluded.ended", row)
            for row in m.job_datums]
        stmts += [(
            "INSERT INTO jobs (job_id, pipeline, spec_hash, salt, started, ended, state, total, "
            "skipped, processed, failed, recovered, message) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
            "started = excluded.started, ended = excluded.ended, state = excluded.state, "
            "total = excluded.total, skipped = excluded.skipped, "
            "processed = excluded.processed, failed = excluded.failed, "
            "recovered = excluded.recovered, message = excluded.message", row)
            for row in m.jobs]
        self._transaction(stmts)


@dataclass
class BucketMirror:
    """What `Ledger.mirror` writes: rows in the tables' column order."""

    dropped: Sequence[str]  # record keys no longer in the bucket
    fetched: Sequence[tuple[str, str, str]]  # (key, ETag, body) of records fetched now
    datums: Sequence[tuple[str, str, str, str]]
    outputs: Sequence[tuple[str, str]]  # (path, datum id)
    job_datums: Sequence[tuple[Any, ...]]
    jobs: Sequence[tuple[Any, ...]]

_INSERT_INTENT = "INSERT INTO intents (datum_id, op, path, source) VALUES (?, ?, ?, ?)"


def _intent_seqs(stmts: Sequence[tuple[str, Sequence[Any]]], rowids: Sequence[int]) -> list[int]:
    return [rowid for (sql, _), rowid in zip(stmts, rowids, strict=True) if sql is _INSERT_INTENT]


def _db_path(path: str) -> str | bytes:
    """How a path is stored: TEXT when it is UTF-8, else a BLOB of its raw bytes."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _py_path(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _make_private(path: str) -> None:
    """Create the database (if new) and any -wal/-shm readable by the owner only."""
    for name, flags in ((path, os.O_CREAT), (path + "-wal", 0), (path + "-shm", 0)):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | flags, 0o600)
        except FileNotFoundError:
            continue
        try:
            st = os.fstat(fd)
            # One made by an older pfsmount was 0644; only its owner can (and need) fix it.
            if stat.S_IMODE(st.st_mode) != 0o600 and st.st_uid == os.geteuid():
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def _describe(exc: sqlite3.Error, path: str) -> str:
    text = str(exc)
    if "full" in text.lower():
        return f"the disk holding {path} is full ({text}); free some space and run again"
    if isinstance(exc, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
        return (f"ledger {path} is damaged: {text} (move it away to start afresh: the next run "
                "then processes every datum again)")
    return f"ledger {path}: {text}"
