"""Which datums a run takes, decided while the repos are listed.

`begin_job` does what must precede the first datum and needs no listing: recovery, and the
job's id (a new one, or the interrupted job's). `Producer` then runs in a thread beside the
job: it reads the datum stream, plans each batch against the ledger (indexed lookups:
finished in the interrupted job? processed before with the same hash?), marks the batch's
ids seen, hands the datums to run to the loop over a bounded queue (`DatumLoop.feed`) and,
when the stream ends, sweeps the recorded datums it never saw (their outputs go), then tells
the ledger and the loop the total. Nothing here holds more than a batch of datums.

`planned` is the one place where a datum is taken or left out of this run's stream: a shard
(`--shard I/N`) takes only the datums it owns, decided lazily as the stream goes by.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from pfsmount.datums import Datum, datum_hash
from pfsmount.ledger import Ledger, LedgerError
from pfsmount.output import OutputRepo
from pfsmount.queue import DatumRecord, DatumState
from pfsmount.shardjob import choose_job
from pfsmount.shards import Shard, select
from pfsmount.spec import PipelineSpec, SpecError
from pfsmount.store.base import RepoSource, StoreError

__all__ = ["Plan", "Producer", "begin_job", "inputs_json", "planned"]

log = logging.getLogger(__name__)

PLAN_BATCH = 1000  # datums per ledger lookup and per hand-over to the loop
BATCH_SECONDS = 0.05  # longest a listed datum waits for its batch to fill
# Fewer datums than this waiting in the loop: a batch goes after LOW_WATER_SECONDS instead of
# BATCH_SECONDS, so workers hardly wait for a batch to fill, and a run of skipped datums is
# still planned in batches, not one by one.
LOW_WATER = 64
LOW_WATER_SECONDS = 0.002

DatumStream = Callable[[], Iterator[Datum]]


@dataclass
class Plan:
    """What this run does: its job, and what the stream planned so far."""

    job_id: str
    resuming: bool
    # The interrupted job's datums that had ended, by state (from the ledger, at start).
    earlier_counts: dict[DatumState, int] = field(default_factory=dict)
    earlier_skipped: int = 0
    # The interrupted job's FAILED and RECOVERED datums: id -> (state, attempts, error).
    troubled: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    earlier: list[DatumRecord] = field(default_factory=list)  # those of them listed again
    skipped: int = 0  # unchanged and processed before (this run's decision)
    listed: int = 0  # datums the stream produced so far
    complete: bool = False  # the stream has ended
    problem: str = ""  # why the stream stopped early
    sweep: bool = False  # mark listed ids, and forget the unmarked once the listing ends
    forgotten: int = 0  # datums the sweep found gone

    @property
    def resumed(self) -> int:
        return sum(self.earlier_counts.values())


def planned(datums: Iterable[Datum], shard: Shard | None = None) -> Iterator[Datum]:
    """The datums this run takes, in order: the one place to leave datums out of a run.
    Everything after it (the ledger's rows, the sweep of vanished datums, the totals) sees
    only these, which is what keeps a shard's ledger to its own datums."""
    return select(datums, shard)


def begin_job(spec: PipelineSpec, output: OutputRepo, ledger: Ledger, spec_hash: str,
              job_name: str | None = None) -> Plan:
    """Recover from a crash and open the job (blocking I/O): the interrupted one, the named
    one (`--job`, shared by every shard of a job; `shardjob.choose_job`), or a new one."""
    redone = output.recover()
    if redone:
        log.info("finished %d output change(s) that an earlier crash interrupted", redone)
    output.clear_staging()
    job_id, interrupted = choose_job(ledger, job_name)
    # Datums the ledger remembers and the input no longer produces lose their outputs: the
    # ids the listing produces are marked in the ledger, the others swept when it ends.
    plan = Plan(job_id, interrupted, sweep=ledger.has_datums())
    if interrupted:
        counts = ledger.state_counts(job_id)
        plan.earlier_counts = {s: counts.get(s.value, 0) for s in (
            DatumState.SUCCESS, DatumState.FAILED, DatumState.RECOVERED)}
        plan.earlier_skipped = counts.get("skipped", 0)
        plan.troubled = {row[0]: row[1:] for row in ledger.troubled_in_job(job_id)}
    # The total is not known yet: `Producer` records it when the listing ends.
    ledger.start_job(job_id, spec.location, spec_hash, spec.salt, 0)
    _publish(ledger, output, job_id)
    output.job_id = job_id
    output.load_index()
    return plan


def _publish(ledger: Ledger, output: OutputRepo, job_id: str) -> None:
    """Make the job's row readable wherever the output repo is (the bucket: other machines,
    other shards)."""
    job = ledger.job(job_id)
    if job is not None:
        output.publish_job(job)


def plan_batch(plan: Plan, batch: Sequence[Datum], spec: PipelineSpec,
               repos: Mapping[str, RepoSource], ledger: Ledger,
               output: OutputRepo) -> list[Datum]:
    """The datums of `batch` that must run; registers the batch's rows for the next flush."""
    ids = [d.id for d in batch]
    if plan.sweep:
        ledger.mark_seen(ids)
    finished = ledger.done_in_job_of(plan.job_id, ids) if plan.resuming else {}
    processed = ledger.processed_hashes_of(ids) if spec.reprocess_spec != "every_job" else {}
    to_run: list[Datum] = []
    rows = []
    for d in batch:
        done = finished.get(d.id)
        if done is not None:
            if done != "skipped":
                state, attempts, error = plan.troubled.get(d.id, ("success", 0, ""))
                if state != "success":
                    plan.earlier.append(DatumRecord(d, DatumState(state), attempts, error))
            continue
        inputs = inputs_json(d)
        # Only a datum processed before can be skipped, so only those are hashed now; the
        # others are hashed when they end.
        known = datum_hash(d, repos, spec.salt) if d.id in processed else ""
        if known and processed[d.id] == known:
            plan.skipped += 1
            rows.append((d.id, known, inputs, "skipped"))
        else:
            to_run.append(d)
            rows.append((d.id, known, inputs, "pending"))
    output.register_later(rows)
    return to_run


class Producer:
    """Lists datums in a thread and feeds them to the job's loop in planned batches."""

    def __init__(self, plan: Plan, spec: PipelineSpec, repos: Mapping[str, RepoSource],
                 stream: DatumStream, ledger: Ledger, output: OutputRepo, loop: _Feedable,
                 on_batch: Callable[[], None] = lambda: None, shard: Shard | None = None) -> None:
        self.plan = plan
        self._shard = shard
        self._spec = spec
        self._repos = repos
        self._stream = stream
        self._ledger = ledger
        self._output = output
        self._loop = loop
        self._on_batch = on_batch
        self._stop = threading.Event()
        self._quit = threading.Event()  # tells the reader thread to stop (see `_produce`)
        self._scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(self) -> None:
        """List, plan and feed until the stream ends or `stop`; then end the listing."""
        token = trio.lowlevel.current_trio_token()
        try:
            with self._scope:
                # Abandoned on `stop`: the thread notices at its next datum and returns.
                await trio.to_thread.run_sync(self._produce, token, abandon_on_cancel=True)
        finally:
            self.done.set()
            if not self._stop.is_set():
                self._loop.end_listing()

    def stop(self) -> None:
        """The job is ending: list no further (on the trio thread)."""
        self._stop.set()
        self._quit.set()
        self._scope.cancel()

    def _produce(self, token: trio.lowlevel.TrioToken) -> None:
        plan = self.plan
        listed: queue.Queue[Datum | _End] = queue.Queue(maxsize=PLAN_BATCH)
        # The listing runs in a thread of its own, so a batch is handed over on time even
        # while the walk is slow to reach the next datum (a huge directory, a slow bucket).
        reader = threading.Thread(target=self._read, args=(listed,), daemon=True,
                                  name="pfsmount-listing")
        reader.start()
        batch: list[Datum] = []
        since = time.monotonic()
        try:
            while True:
                # Held for BATCH_SECONDS at most, LOW_WATER_SECONDS while workers run short.
                wait = LOW_WATER_SECONDS if self._loop.waiting < LOW_WATER else BATCH_SECONDS
                try:
                    item = listed.get(timeout=max(0.0, since + wait - time.monotonic())
                                      if batch else None)
                except queue.Empty:
                    item = None
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    break
                if item is not None:
                    batch.append(item)
                    plan.listed += 1
                if batch and (item is None or len(batch) >= PLAN_BATCH or plan.listed == 1):
                    if not self._hand_over(batch, token):
                        return
                    batch = []
                    since = time.monotonic()
            if batch and not self._hand_over(batch, token):
                return
            self._ledger.set_total(plan.job_id, plan.listed)
            _publish(self._ledger, self._output, plan.job_id)  # now with its total
            if plan.sweep:
                plan.forgotten = self._output.forget_unseen()
                if plan.forgotten:
                    log.info("removed the outputs of %d datum(s) that no longer exist",
                             plan.forgotten)
            plan.complete = True
        except (SpecError, StoreError, OSError, LedgerError) as exc:
            if self._stop.is_set():
                return
            plan.problem = (f"listing the input stopped after {plan.listed} datums: {exc} "
                            "(the datums listed so far ran; fix it and run again)")
            log.error("%s", plan.problem)
        except (trio.RunFinishedError, trio.Cancelled):
            return  # the job is over
        except Exception:
            if self._stop.is_set():
                return  # the job ended under us (a closed ledger): nothing to report
            raise
        finally:
            self._quit.set()  # the reader, if still listing, stops at its next datum

    def _read(self, listed: queue.Queue[Datum | _End]) -> None:
        """Put every planned datum on `listed`, then an `_End` (with the error, if any)."""
        end = _End()
        try:
            for datum in planned(self._stream(), self._shard):
                while not self._put(listed, datum):
                    if self._quit.is_set():
                        return
        except Exception as exc:  # handed to the producer, which reports it
            end.error = exc
        while not self._put(listed, end) and not self._quit.is_set():
            pass

    def _put(self, listed: queue.Queue[Datum | _End], item: Datum | _End) -> bool:
        try:
            listed.put(item, timeout=0.1)
        except queue.Full:
            return False
        return True

    def _hand_over(self, batch: list[Datum], token: trio.lowlevel.TrioToken) -> bool:
        if self._stop.is_set():
            return False
        to_run = plan_batch(self.plan, batch, self._spec, self._repos, self._ledger,
                            self._output)
        return trio.from_thread.run(self._loop.feed, to_run, trio_token=token)


@dataclass
class _End:
    """The listing ended (`error`: why, when it stopped early)."""

    error: Exception | None = None


class _Feedable(Protocol):
    """What `Producer` needs of the loop (`worker.DatumLoop`)."""

    waiting: int  # datums queued and not yet taken (read from the producer's thread)

    async def feed(self, datums: Sequence[Datum]) -> bool: ...
    def end_listing(self) -> None: ...


def inputs_json(datum: Datum) -> str:
    """`json.dumps([{"name": ..., "repo": ..., "path": ...}, ...])` of a datum's inputs, the
    same text, built several times faster (it runs once per datum at the start of a job)."""
    return "[" + ", ".join([_input_json_head(i.name, i.repo) + _json_str(i.path) + "}"
                            for i in datum.inputs]) + "]"


_json_str = json.encoder.encode_basestring_ascii  # what json.dumps uses by default


@functools.lru_cache(maxsize=256)
def _input_json_head(name: str, repo: str) -> str:
    return f'{{"name": {_json_str(name)}, "repo": {_json_str(repo)}, "path": '
