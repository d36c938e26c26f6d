"""The datum loop: what finishing a datum attempt and presenting the next one do.

`DatumLoop` is the job's side: one shared `DatumQueue`, the output repo, the datum env,
err_cmd, preparing the next datum ahead, group commits. `Worker` is one slot that takes a
datum from the queue, runs its attempts and gives it back: it owns the current attempt, its
deadline and the NextDatum calls of its own user process.

Closing an attempt commits its /pfs/out (success) or, on failure, runs `err_cmd` while the
failed datum is still in the worker's /pfs, drops its output, and either marks it RECOVERED
(err_cmd exited 0), puts it back at the head of the queue (tries remain) or marks it FAILED.
Presenting a datum builds its view and staging directory off the trio thread and swaps /pfs
in one step.

Both drivers use a worker: with datum batching the user code's NextDatum calls arrive
through `Bridge` or the local socket (serialized per worker, as Pachyderm does); without it
`supervisor.py` advances the worker itself once per process. When a user process dies or
times out, the supervisor `pause`s its worker first, so a late call from the dying process can
never close or take a datum that belongs to its successor.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from pfsmount.datums import Datum
from pfsmount.fs import PfsOperations
from pfsmount.ledger import LedgerError
from pfsmount.names import env_line, message
from pfsmount.outdir import OutTree
from pfsmount.outlinks import DatumFiles, materialize
from pfsmount.output import OutputConflict, OutputRepo, small_listing
from pfsmount.queue import FINAL_STATES, DatumQueue, DatumRecord, DatumState
from pfsmount.reply import Reply, WorkerGone, WorkerRefused
from pfsmount.store.base import RepoSource
from pfsmount.view import View, build_view, empty_view, set_env_file
from pfsmount.viewfiles import ViewWarming, read_failure, warm

log = logging.getLogger(__name__)

# Pachyderm hides this variable from user code; so do we.
HIDDEN_ENV = frozenset({"POSTGRES_PASSWORD"})
# Inherited variables that belong to every datum's env (the worker's own, in Pachyderm).
DATUM_ENV_PREFIXES = ("PPS_", "PACH_")
# Datums listed ahead of the workers: enough that no worker waits for the listing, few
# enough that memory stays flat however large the repo.
FEED_AHEAD = 10_000
FEED_POLL = 0.01


__all__ = ["FINAL_STATES", "Bridge", "DatumLoop", "DatumRecord", "DatumState", "Worker"]


@dataclass
class _Prepared:
    """A datum's view, staging and env, ready to be shown."""

    record: DatumRecord
    view: View
    out: OutTree
    env: list[tuple[str, str]]
    datum_keys: frozenset[str] = frozenset()  # the datum's own variables in `env`


@dataclass
class _Prefetch:
    """The next datum being prepared in the background."""

    record: DatumRecord
    done: trio.Event = field(default_factory=trio.Event)
    prepared: _Prepared | None = None
    warming: ViewWarming | None = None  # its small files, being fetched from a remote store


@dataclass
class _Current:
    record: DatumRecord
    view: View
    out: OutTree
    env: list[tuple[str, str]]


# (failed record, its env, the worker it failed on) -> err_cmd's exit status
ErrCmdRunner = Callable[[DatumRecord, Mapping[str, str], int], Awaitable[int]]


def shared_env(
    process_env: Mapping[str, str], transform_env: Mapping[str, str]
) -> list[tuple[str, str]]:
    """The variables every datum's env starts with: `transform.env`, then `PPS_*`/`PACH_*`.

    Not the whole environment the user code inherits (PACHYDERM.md §4, "pfsmount differs"):
    the process has that anyway, and a copy in /pfs/.env and in every NextDatum reply would
    cost every datum and put the launching shell's secrets on a mount.
    """
    pairs = [(k, process_env.get(k, v)) for k, v in transform_env.items()]
    pairs += [(k, v) for k, v in process_env.items()
              if k.startswith(DATUM_ENV_PREFIXES) and k not in transform_env]
    return [(k, v) for k, v in pairs if k not in HIDDEN_ENV]


def datum_env(
    datum: Datum, shared: Sequence[tuple[str, str]], job_id: str, mountpoint: str
) -> list[tuple[str, str]]:
    """The environment of one datum, in Pachyderm's order (PACHYDERM.md §4)."""
    own = datum.env(mountpoint)
    own += [("PACH_DATUM_ID", datum.id), ("PACH_JOB_ID", job_id),
            ("PACH_OUTPUT_COMMIT_ID", job_id)]
    own_keys = {k for k, _ in own}
    return [(k, v) for k, v in shared if k not in own_keys] + own


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_file(env: Sequence[tuple[str, str]], datum_keys: frozenset[str] = frozenset()) -> bytes:
    """/pfs/.env: one KEY=VALUE per line, readable by `source` and by python-dotenv.

    Values are quoted only when needed (`names.env_line`): `source /pfs/.env` yields each
    value's exact bytes and runs none of it. `transform.env` names that are not shell
    identifiers are left out for the same reason; the datum's own variables (named after
    the inputs) are always written.
    """
    lines = [env_line(key, value) for key, value in env
             if key in datum_keys or _IDENTIFIER.fullmatch(key)]
    # "replace" only for a string that is not even surrogateescape (never from the OS).
    return "".join(lines).encode("utf-8", "replace")


def _add_own_env(prepared: _Prepared, own: Sequence[tuple[str, str]]) -> None:
    """Complete a prepared datum's env (reply and /pfs/.env) with the taking worker's own
    variables, placed before the datum's own ones as the shared ones are."""
    keys = {k for k, _ in own}
    env = [(k, v) for k, v in prepared.env if k not in keys]
    at = next((i for i, (k, _) in enumerate(env) if k in prepared.datum_keys), len(env))
    prepared.env = [*env[:at], *own, *env[at:]]
    # The view is not shown yet: its .env node can change without rebuilding the view.
    set_env_file(prepared.view, env_file(prepared.env, prepared.datum_keys))


class DatumLoop:
    """One job's datum loop: the shared queue, what every attempt needs, and the workers.

    What is the job's lives here (the queue, the output repo, the repos, the datum env, err_cmd,
    preparing ahead, group commits); what is one worker's (its current attempt, deadline,
    NextDatum calls, what its /pfs shows) lives in its `Worker`.
    """

    def __init__(
        self,
        datums: Sequence[Datum],
        repos: Mapping[str, RepoSource],
        fs: PfsOperations,
        output: OutputRepo,
        mountpoint: str,
        *,
        tries: int = 3,
        datum_timeout: float | None = None,
        batching: bool = True,
        workers: int = 1,
        on_progress: Callable[[DatumLoop], None] = lambda loop: None,
        listing: bool = False,
    ) -> None:
        # `listing`: more datums come through `feed` until `end_listing`.
        self.queue = DatumQueue(datums, complete=not listing)
        self.repos = repos
        self.fs = fs
        self.output = output
        self.mountpoint = mountpoint
        self.tries = tries
        self.datum_timeout = datum_timeout
        self.batching = batching
        self._on_progress = on_progress
        self.process_env: dict[str, str] = {}  # what the user process inherits
        self._shared_env: list[tuple[str, str]] = []  # what every datum's env starts with
        self._shared_keys: frozenset[str] = frozenset()
        self.err_cmd: ErrCmdRunner | None = None
        self._nursery: trio.Nursery | None = None
        self._prefetch: _Prefetch | None = None
        self.closed = False
        self.finished = trio.Event()  # every datum has reached a final state
        self.listing_ended = trio.Event()  # no datum will be fed any more
        if not listing:
            self.listing_ended.set()
        self._work_changed = trio.Event()  # a retry came back, the job finished or closed
        # One flush at a time, from its commit to its bookkeeping: the ids a flush drains
        # may be another flush's, whose failures must be applied before they are released.
        self._flushing = trio.Lock()
        self.workers = [Worker(w, self) for w in range(workers)]

    def configure(
        self,
        process_env: Mapping[str, str],
        err_cmd: ErrCmdRunner | None,
        transform_env: Mapping[str, str] | None = None,
    ) -> None:
        """The user process's environment, the spec's `transform.env`, and err_cmd.

        A datum's env (reply and /pfs/.env) is `shared_env` of these plus the datum's own
        variables; err_cmd runs with the process environment plus the datum's env.
        """
        self.process_env = dict(process_env)
        self._shared_env = shared_env(process_env, transform_env or {})
        self._shared_keys = frozenset(k for k, _ in self._shared_env)
        self.err_cmd = err_cmd

    # ----- queries --------------------------------------------------------------------

    @property
    def records(self) -> list[DatumRecord]:
        return self.queue.records

    def count(self, state: DatumState) -> int:
        return self.queue.count(state)

    @property
    def closed_count(self) -> int:
        return self.queue.closed_count

    def progress(self) -> None:
        self._on_progress(self)

    # ----- datums arriving while the repos are listed ------------------------------------

    @property
    def waiting(self) -> int:
        """Datums queued and not yet taken (the producer reads it from its thread: an int)."""
        return self.queue.waiting

    async def feed(self, datums: Sequence[Datum]) -> bool:
        """Queue a batch of listed datums; waits while `FEED_AHEAD` datums already wait.

        False when the loop is closed (the producer stops listing).
        """
        while self.queue.waiting >= FEED_AHEAD and not self.closed:
            await trio.sleep(FEED_POLL)  # until workers have taken some
        if self.closed:
            return False
        self.queue.add(datums)
        self.poke()
        self.progress()
        return True

    def end_listing(self) -> None:
        """Every datum has been fed: the job can finish once they have run."""
        self.queue.complete = True
        self.listing_ended.set()
        self.check_finished()
        self.poke()
        self.progress()

    async def has_work(self) -> bool:
        """Wait for the first datum, or the end of an empty listing; True if there is one."""
        while self.queue.total == 0 and not self.queue.complete and not self.closed:
            await self.wait_for_work()
        return self.queue.total > 0

    # ----- the job's end ----------------------------------------------------------------

    def check_finished(self) -> bool:
        """Set `finished` once the listing is complete, nothing waits and no worker holds a
        datum; True if so."""
        if (not self.finished.is_set() and self.queue.complete and self.queue.empty
                and all(w.idle for w in self.workers)):
            self.finished.set()
            self.poke()
        return self.finished.is_set()

    def poke(self) -> None:
        """Wake workers waiting for work: a datum came back, or the job ended or closed."""
        self._work_changed.set()
        self._work_changed = trio.Event()

    async def wait_for_work(self) -> None:
        """Until `poke`: the queue is empty, but a datum still running may come back."""
        await self._work_changed.wait()

    async def abort(self, reason: str) -> None:
        """End the loop early: attempts in progress are dropped (a resume runs them again)."""
        self.close()
        for worker in self.workers:
            await worker.drop(reason)

    def close(self) -> None:
        """Refuse every further call (the job is ending)."""
        self.closed = True
        self.listing_ended.set()  # a datum waiting for the listing's end waits no more
        if self._prefetch is not None and self._prefetch.warming is not None:
            self._prefetch.warming.cancel()  # no datum will be shown any more
        self.poke()

    def retry(self, record: DatumRecord) -> None:
        """Put a datum whose attempt failed back first in line, for whichever worker asks."""
        self.queue.retry(record)
        self.poke()

    # ----- preparing datums -------------------------------------------------------------

    def prepare(self, record: DatumRecord, worker: int) -> _Prepared:
        """Everything a datum needs before it can be shown (blocking: runs in a thread).

        Its staging directory is named for `worker`, the worker that asked for it.
        """
        env = datum_env(record.datum, self._shared_env, self.output.job_id, self.mountpoint)
        datum_keys = frozenset(k for k, _ in env if k not in self._shared_keys)
        view = build_view(record.datum, self.repos, env_file(env, datum_keys), self.fs.inodes)
        out = OutTree(self.output.new_staging(worker), self.fs.inodes)
        return _Prepared(record, view, out, env, datum_keys)

    def start_prefetching(self, nursery: trio.Nursery) -> None:
        """Prepare each next datum in the background while the current one runs."""
        self._nursery = nursery

    def prefetch_next(self, worker: int) -> None:
        record = self.queue.peek()
        if self._nursery is None or record is None or self._prefetch is not None:
            return
        slot = _Prefetch(record)
        self._prefetch = slot

        def prepare_and_warm() -> _Prepared:
            prepared = self.prepare(slot.record, worker)
            # Only submitted here: the fetches run on the store's own threads, so neither
            # this thread nor the swap ever waits for them.
            slot.warming = warm(prepared.view)
            return prepared

        async def run() -> None:
            try:
                slot.prepared = await trio.to_thread.run_sync(prepare_and_warm)
            except OSError as exc:
                log.debug("preparing datum %s ahead failed: %s", slot.record.datum.id[:12], exc)
            finally:
                slot.done.set()

        self._nursery.start_soon(run)

    async def take_prepared(self, record: DatumRecord, worker: int) -> _Prepared:
        slot = self._prefetch
        if slot is not None and slot.record is not record and not slot.done.is_set():
            slot = None  # another datum's, still being built: leave it for whoever takes it
        else:
            self._prefetch = None
        if slot is not None:
            await slot.done.wait()
            if slot.prepared is not None and slot.record is record:
                return slot.prepared
            if slot.warming is not None:
                slot.warming.cancel()
            if slot.prepared is not None:
                # A retry jumped the queue: the datum prepared ahead is not the next one.
                await trio.to_thread.run_sync(self.output.discard, slot.prepared.out.staging)
        return await trio.to_thread.run_sync(self.prepare, record, worker)

    # ----- endings ------------------------------------------------------------------------

    async def finish(self, record: DatumRecord, state: DatumState, error: str) -> None:
        """Record a final FAILED or RECOVERED: the datum keeps no output."""
        error = message(error)
        self.queue.set_state(record, state)
        record.error = error
        if state is DatumState.FAILED:
            log.warning("datum %s failed after %d attempt%s: %s", record.datum.id[:12],
                        record.attempts, "" if record.attempts == 1 else "s", error)
        else:
            log.warning("datum %s recovered by err_cmd after: %s", record.datum.id[:12], error)
        try:
            await trio.to_thread.run_sync(lambda: self.output.stage_failure(
                record.datum.id, state.value, attempts=record.attempts, seconds=record.seconds,
                error=error))
        except (OSError, LedgerError) as exc:
            # Nothing of the datum reached the output repo, so the two still agree.
            log.error("could not record datum %s as %s: %s", record.datum.id[:12],
                      state.value, exc)
        self.progress()

    async def flush(self) -> None:
        """Group-commit the datums that ended since the last flush."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        if not self.output.pending:
            return
        for datum_id, error in await trio.to_thread.run_sync(self.output.flush):
            record = self.queue.record(datum_id)
            self.queue.set_state(record, DatumState.FAILED)
            record.error = error
            record.output_files = 0
            log.warning("datum %s failed: %s", datum_id[:12], error)
            self.progress()
        # Committed: nothing needs these records any more (the hasher asked before).
        for datum_id in self.output.drain_committed():
            self.queue.release(datum_id)


class Worker:
    """One worker slot: takes a datum from the job's queue, runs attempts, gives it back.

    Per-worker state lives here, never in the job: the current attempt (view, staging, env),
    its deadline, the NextDatum calls of this worker's user process, and the pause that keeps
    a dying process's late call from moving this worker.
    """

    def __init__(self, index: int, job: DatumLoop) -> None:
        self.index = index
        self._job = job
        self._lock = trio.Lock()  # this worker's NextDatum calls, one at a time
        self._current: _Current | None = None
        # Taken from the queue, not yet shown (its view may still be being built): the
        # worker is not idle, or the job could finish without it.
        self._taking: DatumRecord | None = None
        self._paused = False
        self._generation = 0
        self.process_calls = 0  # NextDatum calls made by the current user process
        self.last_caller_own = False  # was the final call made by a pfsmount client?
        self.deadline: float | None = None  # trio clock time the current attempt times out
        self.changed = trio.Event()  # set (and replaced) whenever the current attempt changes
        self.attempts = 0  # attempts this worker ran (for the summary)
        # Variables only this worker knows, added to each datum it takes (with N workers: its
        # own PPS_WORKER_GRPC_PORT; a datum is prepared before it is known who takes it).
        self.own_env: tuple[tuple[str, str], ...] = ()
        self.busy_seconds = 0.0  # time it held a datum

    @property
    def current(self) -> DatumRecord | None:
        return self._current.record if self._current else None

    @property
    def idle(self) -> bool:
        return self._current is None and self._taking is None

    def current_attempt(self) -> tuple[DatumRecord, int] | None:
        cur = self._current
        return (cur.record, cur.record.attempts) if cur else None

    # ----- the protocol (datum batching) ----------------------------------------------

    async def next_datum(self, error: str, own_client: bool) -> Reply:
        """A NextDatum call: close the current attempt (failed if `error`), present the next."""
        if not self._job.batching:
            raise WorkerRefused("datum batching not enabled")
        generation = self._generation
        if self._paused:
            raise WorkerGone("this user process is being stopped")
        async with self._lock:
            if self._job.closed:
                raise WorkerGone("the job is over: pfsmount is shutting down")
            if generation != self._generation:
                raise WorkerGone("this user process is being stopped")
            self.process_calls += 1
            self.last_caller_own = own_client
            if self._current is not None:
                await self._close_attempt(error)
            return await self._advance()

    # ----- the supervisor's side ------------------------------------------------------

    async def advance(self, error: str) -> Reply:
        """Close the current attempt (failed if `error`) and present the next: classic mode."""
        async with self._lock:
            if self._job.closed:
                raise WorkerGone("the job is over")
            if self._current is not None:
                await self._close_attempt(error)
            return await self._advance()

    async def pause(self, attempt: tuple[DatumRecord, int] | None = None) -> bool:
        """Stop serving the current process; False if `attempt` is no longer current.

        Calls made by the process from now on, or already waiting, are refused, so a process
        being stopped cannot move the worker. `attempt` guards a timeout against a datum that
        finished in the meantime.
        """
        if attempt is None:
            # A call of the dead process may be waiting for work with the lock held.
            self._paused = True
            self._generation += 1
            self._job.poke()
        async with self._lock:
            if attempt is not None and self.current_attempt() != attempt:
                return False
            self._paused = True
            self._generation += 1
            return True

    async def process_died(self, reason: str) -> None:
        """The paused process is gone: its datum attempt (if any) failed for `reason`."""
        async with self._lock:
            if self._current is not None:
                await self._close_attempt(reason)
            self._show_nothing()
            self._job.check_finished()  # that was the last datum: no successor is needed

    def resume(self) -> None:
        """A fresh user process is starting; its first call only says it is ready."""
        self._paused = False
        self.process_calls = 0

    async def drop(self, reason: str) -> None:
        """The job stops early: the attempt in progress goes back to PENDING, unrecorded."""
        async with self._lock:
            cur = self._current
            if cur is not None:
                self._current = None
                self._job.fs.seal(cur.out)
                self.busy_seconds += time.monotonic() - cur.record.started
                self._job.queue.set_state(cur.record, DatumState.PENDING)
                cur.record.error = reason
                await trio.to_thread.run_sync(self._job.output.discard, cur.out.staging)
            self._show_nothing()

    # ----- internals ------------------------------------------------------------------

    async def _advance(self) -> Reply:
        job = self._job
        generation = self._generation
        while True:
            record = job.queue.take()
            if record is None:
                self._show_nothing()
                if job.check_finished():
                    return Reply(env=(), done=True)
                # Other workers still run datums, and a failed one comes back to the queue:
                # "no more datums" would be premature, so the call waits.
                await job.wait_for_work()
                if job.closed:
                    raise WorkerGone("the job is over: pfsmount is shutting down")
                if generation != self._generation:
                    raise WorkerGone("this user process is being stopped")
                continue
            self._taking = record
            try:
                env = await self._present(record)
            except OSError as exc:
                if self._shown(record):
                    raise
                # Its staging directory could not be made (a full or read-only disk): an
                # attempt that failed, so a lasting cause ends in FAILED datums, not a loop.
                await self._unpreparable(record, exc)
                continue
            except BaseException:
                if not self._shown(record):
                    job.retry(record)  # never shown: it goes back first in line, not missing
                raise
            finally:
                self._taking = None
            return Reply(env=tuple(f"{k}={v}" for k, v in env), datum_id=record.datum.id)

    def _shown(self, record: DatumRecord) -> bool:
        return self._current is not None and self._current.record is record

    async def _unpreparable(self, record: DatumRecord, exc: OSError) -> None:
        record.attempts += 1
        self.attempts += 1
        record.error = message(f"could not prepare the datum's /pfs: {exc}")
        await self._retry_or_fail(record)

    async def _present(self, record: DatumRecord) -> list[tuple[str, str]]:
        # Building a large view must not stall the file system: it runs in a thread (ahead
        # of time when prefetching), and only the swap itself happens on the trio thread.
        job = self._job
        prepared = await job.take_prepared(record, self.index)
        if self.own_env:
            _add_own_env(prepared, self.own_env)
        job.queue.set_state(record, DatumState.RUNNING)
        record.attempts += 1
        record.started = time.monotonic()
        self._current = _Current(record, prepared.view, prepared.out, prepared.env)
        job.fs.show(prepared.view, prepared.out, self.index)
        self.deadline = (trio.current_time() + job.datum_timeout
                         if job.datum_timeout else None)
        self._signal_change()
        job.prefetch_next(self.index)
        return prepared.env

    def _show_nothing(self) -> None:
        self._job.fs.show(empty_view(self._job.fs.inodes), None, self.index)
        self.deadline = None
        self._signal_change()

    def _signal_change(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def _close_attempt(self, error: str) -> None:
        cur = self._current
        assert cur is not None
        job = self._job
        job.fs.seal(cur.out)
        record = cur.record
        elapsed = time.monotonic() - record.started
        record.seconds += elapsed
        self.attempts += 1
        self.busy_seconds += elapsed
        if not error:
            # An input object changed after listing: the user code got EIO for it, and its
            # outputs must not count as this datum's, even if it carried on regardless.
            error = read_failure(cur.view)
        if not error:
            try:
                try:
                    record.output_files = await self._stage_success(record, cur)
                except OutputConflict:
                    if job.queue.complete:
                        raise
                    # The other owner may be a datum the input no longer produces, whose
                    # outputs go only once the listing has ended (`plan.Producer`).
                    await job.listing_ended.wait()
                    if job.closed:
                        # Left as it is: `drop` puts the datum back for a resume.
                        raise WorkerGone("the job is over: pfsmount is shutting down") from None
                    record.output_files = await self._stage_success(record, cur)
            except OutputConflict as exc:
                # Deterministic: another try would write the same path again.
                self._current = None
                await trio.to_thread.run_sync(job.output.discard, cur.out.staging)
                await job.finish(record, DatumState.FAILED, str(exc))
                return
            except (OSError, LedgerError) as exc:
                error = f"could not commit its output: {exc}"
            else:
                self._current = None
                job.queue.set_state(record, DatumState.SUCCESS)
                record.error = ""
                job.progress()
                return
        await self._failed_attempt(cur, error)

    async def _stage_success(self, record: DatumRecord, cur: _Current) -> int:
        # A few files in one directory (the usual datum) are staged right here: a thread
        # hop would cost more than the work. Anything bigger, or with symlinks that may
        # point into an input (`outlinks`), is handled in a thread.
        job = self._job
        staging = cur.out.staging
        stage = functools.partial(job.output.stage_success, record.datum.id, staging,
                                  attempts=record.attempts, seconds=record.seconds)
        listing = small_listing(staging)
        if listing is not None:
            return stage(listing=listing)
        files = DatumFiles(cur.view, job.repos, job.mountpoint)

        def links_then_stage() -> int:
            materialize(staging, files)
            return stage()

        return await trio.to_thread.run_sync(links_then_stage)

    async def _failed_attempt(self, cur: _Current, error: str) -> None:
        job = self._job
        record = cur.record
        # An error may quote a name that is not UTF-8; the ledger and logs store text.
        error = message(error)
        record.error = error
        recovered = False
        if job.err_cmd is not None:
            # The failed datum is still what this worker's /pfs shows while err_cmd runs.
            code = await job.err_cmd(record, {**job.process_env, **dict(cur.env)}, self.index)
            recovered = code == 0
        self._current = None
        await trio.to_thread.run_sync(job.output.discard, cur.out.staging)
        if recovered:
            await job.finish(record, DatumState.RECOVERED, error)
        else:
            await self._retry_or_fail(record)

    async def _retry_or_fail(self, record: DatumRecord) -> None:
        """An attempt of `record` failed (`record.error` says why): again, or FAILED."""
        job = self._job
        if record.attempts < job.tries:
            job.retry(record)  # Pachyderm retries a datum right away
            log.warning("datum %s attempt %d of %d failed: %s; trying again",
                        record.datum.id[:12], record.attempts, job.tries, record.error)
        else:
            await job.finish(record, DatumState.FAILED, record.error)


class Bridge:
    """Runs one worker's NextDatum calls from gRPC threads on the trio thread."""

    def __init__(self, worker: Worker, token: trio.lowlevel.TrioToken) -> None:
        self._worker = worker
        self._token = token

    def __call__(self, error: str, own_client: bool) -> Reply:
        try:
            return trio.from_thread.run(self._worker.next_datum, error, own_client,
                                        trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled) as exc:
            raise WorkerGone("pfsmount is shutting down") from exc
