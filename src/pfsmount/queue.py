"""One job's datum queue: every datum's record, counts by state, and what is left to run.

The queue is not a worker: workers take datums from it, run attempts, and give each back
finished, or again (a retry goes to the head, as Pachyderm retries right away, and any worker
may take it). Nothing here does I/O or awaits: it lives on the trio thread, so taking and
returning a datum are single steps no other task can interleave with.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pfsmount.datums import Datum


class DatumState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    RECOVERED = "recovered"


FINAL_STATES = frozenset({DatumState.SUCCESS, DatumState.FAILED, DatumState.RECOVERED})


@dataclass
class DatumRecord:
    """What happened to one datum."""

    datum: Datum
    state: DatumState = DatumState.PENDING
    attempts: int = 0
    error: str = ""
    started: float = 0.0
    seconds: float = 0.0
    output_files: int = 0


class DatumQueue:
    """The datums of one job (one shard, later) and the order they are handed out in.

    Datums arrive in batches while the repos are listed (`add`) until `complete`; a queue
    made from a list is complete at once. Memory is bounded by what is in flight, not by the
    job: a record is dropped once its ending is committed (`release`), except the FAILED and
    RECOVERED ones, kept for the job's summary (`troubled`).
    """

    def __init__(self, datums: Sequence[Datum] = (), *, complete: bool = True) -> None:
        self._by_id: dict[str, DatumRecord] = {}
        self._counts: collections.Counter[DatumState] = collections.Counter()
        self._pending: collections.deque[DatumRecord] = collections.deque()
        self.troubled: list[DatumRecord] = []
        self.total = 0  # datums added so far
        self.complete = False
        self.add(datums)
        self.complete = complete

    def __len__(self) -> int:
        return self.total

    def add(self, datums: Iterable[Datum]) -> None:
        """Queue more datums, behind those already waiting."""
        assert not self.complete, "datums added after the listing was complete"
        for d in datums:
            record = DatumRecord(d)
            self._by_id[d.id] = record
            self._pending.append(record)
            self.total += 1
            self._counts[DatumState.PENDING] += 1

    @property
    def records(self) -> list[DatumRecord]:
        """The records still held: waiting, running, or ended and not yet committed."""
        return list(self._by_id.values())

    @property
    def empty(self) -> bool:
        """Nothing is waiting to be taken (datums may still be running or being listed)."""
        return not self._pending

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def take(self) -> DatumRecord | None:
        """The next datum to run, or None when none is waiting."""
        return self._pending.popleft() if self._pending else None

    def peek(self) -> DatumRecord | None:
        """The datum `take` would return next (what is worth preparing ahead)."""
        return self._pending[0] if self._pending else None

    def retry(self, record: DatumRecord) -> None:
        """Hand a datum out again before any other: its last attempt failed, tries remain."""
        self.set_state(record, DatumState.PENDING)
        self._pending.appendleft(record)

    def record(self, datum_id: str) -> DatumRecord:
        return self._by_id[datum_id]

    def release(self, datum_id: str) -> None:
        """Forget a datum whose ending is committed (a troubled one stays in `troubled`)."""
        record = self._by_id.get(datum_id)
        if record is not None and record.state in FINAL_STATES:
            del self._by_id[datum_id]

    def count(self, state: DatumState) -> int:
        return self._counts[state]

    @property
    def closed_count(self) -> int:
        return sum(self._counts[s] for s in FINAL_STATES)

    def set_state(self, record: DatumRecord, state: DatumState) -> None:
        # Counted as they change: the progress line asks after every datum, and a scan of
        # every record each time is quadratic over a job of 100,000 datums.
        self._counts[record.state] -= 1
        self._counts[state] += 1
        if state in (DatumState.FAILED, DatumState.RECOVERED) and record.state not in (
                DatumState.FAILED, DatumState.RECOVERED):
            self.troubled.append(record)
        record.state = state
