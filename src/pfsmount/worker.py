"""The datum loop: what one NextDatum call does, and the record of every datum.

A call closes the current datum (commit its /pfs/out, or drop it when the call reports an
error), then prepares the next datum's view and staging directory off the trio thread,
and finally swaps /pfs to it in one step. Calls are serialized by a lock, as Pachyderm
does. The gRPC threads reach this code through `Bridge`, which hands each call to the
trio thread and waits for its answer.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from pfsmount.datums import Datum
from pfsmount.fs import PfsOperations
from pfsmount.outdir import OutTree
from pfsmount.output import JobOutput, OutputConflict
from pfsmount.protocol import Reply, WorkerGone
from pfsmount.store.local import RepoIndex
from pfsmount.view import View, build_view, empty_view

log = logging.getLogger(__name__)

# Pachyderm hides this variable from user code; so do we.
HIDDEN_ENV = frozenset({"POSTGRES_PASSWORD"})


class DatumState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


@dataclass
class DatumRecord:
    """What happened to one datum."""

    datum: Datum
    state: DatumState = DatumState.PENDING
    error: str = ""
    started: float = 0.0
    seconds: float = 0.0
    output_files: int = 0


@dataclass
class _Current:
    record: DatumRecord
    view: View
    out: OutTree


def datum_env(
    datum: Datum, base_env: Mapping[str, str], job_id: str, mountpoint: str
) -> list[tuple[str, str]]:
    """The environment of one datum, in Pachyderm's order (PACHYDERM.md §4)."""
    own = datum.env(mountpoint)
    own += [("PACH_DATUM_ID", datum.id), ("PACH_JOB_ID", job_id),
            ("PACH_OUTPUT_COMMIT_ID", job_id)]
    own_keys = {k for k, _ in own}
    base = [(k, v) for k, v in base_env.items() if k not in own_keys and k not in HIDDEN_ENV]
    return base + own


_SAFE_VALUE = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_file(env: Sequence[tuple[str, str]], datum_keys: frozenset[str] = frozenset()) -> bytes:
    """/pfs/.env: one KEY=VALUE per line, readable by `source` and by python-dotenv.

    Values are unquoted, as Pachyderm writes them, when that is safe; a value with spaces
    or shell syntax in it (common in a desktop environment, rare in a pod) is single-quoted
    so that `source /pfs/.env` neither breaks nor runs it. Inherited variables whose names
    are not shell identifiers are left out for the same reason; the datum's own variables
    are always written.
    """
    lines = []
    for key, value in env:
        if key not in datum_keys and not _IDENTIFIER.fullmatch(key):
            continue
        if not _SAFE_VALUE.fullmatch(value):
            value = "'" + value.replace("'", "'\\''") + "'"
        lines.append(f"{key}={value}\n")
    return "".join(lines).encode()


class DatumLoop:
    """Hands out datums one NextDatum call at a time."""

    def __init__(
        self,
        datums: Sequence[Datum],
        repos: Mapping[str, RepoIndex],
        fs: PfsOperations,
        output: JobOutput,
        base_env: Mapping[str, str],
        mountpoint: str,
        on_progress: Callable[[DatumLoop], None] = lambda loop: None,
    ) -> None:
        self.records = [DatumRecord(d) for d in datums]
        self._repos = repos
        self._fs = fs
        self._output = output
        self._base_env = dict(base_env)
        self._mountpoint = mountpoint
        self._on_progress = on_progress
        self._lock = trio.Lock()
        self._next = 0
        self._current: _Current | None = None
        self._closed = False
        self.started = False
        self.finished = trio.Event()  # every datum handed out and closed
        self.last_caller_own = False  # was the final call made by a pfsmount client?

    def set_base_env(self, env: Mapping[str, str]) -> None:
        """The user process's environment, which every datum's env starts from."""
        self._base_env = dict(env)

    # ----- queries --------------------------------------------------------------------

    def count(self, state: DatumState) -> int:
        return sum(1 for r in self.records if r.state is state)

    @property
    def closed_count(self) -> int:
        return self.count(DatumState.SUCCESS) + self.count(DatumState.FAILED)

    @property
    def current(self) -> DatumRecord | None:
        return self._current.record if self._current else None

    # ----- the protocol ---------------------------------------------------------------

    async def next_datum(self, error: str, own_client: bool) -> Reply:
        """Close the current datum (failed if `error`), then present the next one."""
        async with self._lock:
            if self._closed:
                raise WorkerGone("the job is over: pfsmount is shutting down")
            self.started = True
            if self._current is not None:
                await self._close_current(error)
            self.last_caller_own = own_client
            if self._next >= len(self.records):
                self._fs.show(empty_view(self._fs.inodes), None)
                self.finished.set()
                return Reply(env=(), done=True)
            record = self.records[self._next]
            self._next += 1
            env = await self._present(record)
            return Reply(env=tuple(f"{k}={v}" for k, v in env), datum_id=record.datum.id)

    async def _present(self, record: DatumRecord) -> list[tuple[str, str]]:
        env = datum_env(record.datum, self._base_env, self._output.job_id, self._mountpoint)

        datum_keys = frozenset(k for k, _ in env if k not in self._base_env)

        def prepare() -> tuple[View, OutTree]:
            text = env_file(env, datum_keys)
            view = build_view(record.datum, self._repos, text, self._fs.inodes)
            out = OutTree(self._output.new_staging(), self._fs.inodes)
            return view, out

        # Building a large view must not stall the file system: it runs in a thread,
        # and only the swap itself happens on the trio thread.
        view, out = await trio.to_thread.run_sync(prepare)
        record.state = DatumState.RUNNING
        record.started = time.monotonic()
        self._current = _Current(record, view, out)
        self._fs.show(view, out)
        return env

    async def _close_current(self, error: str) -> None:
        cur = self._current
        assert cur is not None
        self._current = None
        cur.out.closed = True
        record = cur.record
        record.seconds = time.monotonic() - record.started
        if error:
            self._fail(record, error)
            await trio.to_thread.run_sync(self._output.discard, cur.out.staging)
        else:
            try:
                record.output_files = await trio.to_thread.run_sync(
                    self._output.commit, cur.out.staging, record.datum.id)
                record.state = DatumState.SUCCESS
            except OutputConflict as exc:
                self._fail(record, str(exc))
                await trio.to_thread.run_sync(self._output.discard, cur.out.staging)
            except OSError as exc:
                self._fail(record, f"could not commit its output: {exc}")
                await trio.to_thread.run_sync(self._output.discard, cur.out.staging)
        self._on_progress(self)

    def _fail(self, record: DatumRecord, error: str) -> None:
        record.state = DatumState.FAILED
        record.error = error
        log.warning("datum %s failed: %s", record.datum.id[:12], error)

    async def abort(self, reason: str) -> None:
        """End the loop early: the datum in progress fails and /pfs empties."""
        async with self._lock:
            self._closed = True
            if self._current is not None:
                await self._close_current(reason)
            self._fs.show(empty_view(self._fs.inodes), None)

    def close(self) -> None:
        """Refuse every further call (the job is ending)."""
        self._closed = True


class Bridge:
    """Runs NextDatum calls from gRPC threads on the trio thread."""

    def __init__(self, loop: DatumLoop, token: trio.lowlevel.TrioToken) -> None:
        self._loop = loop
        self._token = token

    def __call__(self, error: str, own_client: bool) -> Reply:
        try:
            return trio.from_thread.run(self._loop.next_datum, error, own_client,
                                        trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled) as exc:
            raise WorkerGone("pfsmount is shutting down") from exc
