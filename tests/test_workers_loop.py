"""The datum queue, a worker's attempts and the workspace, without a kernel mount.

A fake file system records what each swap showed; the output repo, the ledger and the
staging directories are real files. Handlers are awaited directly (pytest-trio).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio

from pfsmount.datums import expand, open_repos
from pfsmount.ledger import Ledger
from pfsmount.outdir import OutTree
from pfsmount.output import OutputRepo
from pfsmount.queue import DatumQueue, DatumState
from pfsmount.reply import Reply, WorkerGone
from pfsmount.spec import parse_spec
from pfsmount.view import InodeAllocator, View
from pfsmount.worker import DatumLoop, DatumRecord, Worker
from pfsmount.workspace import Workspace, WorkspaceBusy

SPEC = """
pipeline: {name: p}
input: {pfs: {repo: r, glob: "/*"}}
transform: {cmd: ["true"], datum_batching: true}
"""


class FakeFs:
    """Stands in for PfsOperations: records every swap as (view, out)."""

    def __init__(self) -> None:
        self.inodes = InodeAllocator()
        self.shown: list[tuple[View, OutTree | None]] = []
        self.by_worker: dict[int, tuple[View, OutTree | None]] = {}

    def show(self, view: View, out: OutTree | None, worker: int = 0) -> None:
        self.shown.append((view, out))
        self.by_worker[worker] = (view, out)

    def seal(self, tree: OutTree) -> None:
        tree.closed = True

    @property
    def out(self) -> OutTree | None:
        return self.shown[-1][1]


def _loop(tmp_path: Path, names: list[str], **kwargs: object) -> tuple[DatumLoop, FakeFs]:
    data = tmp_path / "data"
    for name in names:
        (data / "r" / name).mkdir(parents=True)
        (data / "r" / name / "f").write_text(name)
    spec = parse_spec(SPEC)
    repos = open_repos(spec.input, str(data))
    datums = expand(spec.input, repos)
    ws = Workspace.of(str(data), "p")
    ws.create()
    output = OutputRepo(str(data), "p", Ledger(ws.ledger_path))
    output.clear_staging()
    output.job_id = "job1"
    output.register_later([(d.id, "", "[]", "pending") for d in datums])
    output.load_index()
    fs = FakeFs()
    loop = DatumLoop(datums, repos, fs, output, "/pfs", **kwargs)  # type: ignore[arg-type]
    loop.configure({}, None)
    return loop, fs


def _env(reply_env: tuple[str, ...]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in reply_env)


async def test_a_worker_takes_every_datum_in_order_then_is_told_done(tmp_path: Path) -> None:
    loop, fs = _loop(tmp_path, ["a", "b", "c"])
    worker = loop.workers[0]
    seen = []
    reply = await worker.next_datum("", own_client=True)
    while not reply.done:
        seen.append(_env(reply.env)["r"])
        assert fs.out is not None
        Path(fs.out.staging, _env(reply.env)["r"].rsplit("/", 1)[1]).write_text("out")
        reply = await worker.next_datum("", own_client=True)
    assert seen == ["/pfs/r/a", "/pfs/r/b", "/pfs/r/c"]
    assert loop.finished.is_set() and worker.idle and fs.out is None
    assert loop.count(DatumState.SUCCESS) == 3
    await loop.flush()
    assert sorted(os.listdir(loop.output.repo_dir)) == ["a", "b", "c"]


async def test_a_failed_attempt_is_retried_first_then_fails_after_its_tries(
        tmp_path: Path) -> None:
    loop, _ = _loop(tmp_path, ["a", "b"], tries=2)
    worker = loop.workers[0]
    first = await worker.next_datum("", own_client=True)
    again = await worker.next_datum("boom", own_client=True)
    assert again.datum_id == first.datum_id  # put back at the head of the queue
    record = loop.queue.record(first.datum_id)
    assert record.attempts == 2 and record.state is DatumState.RUNNING
    other = await worker.next_datum("boom again", own_client=True)
    assert other.datum_id != first.datum_id
    assert record.state is DatumState.FAILED and record.error == "boom again"
    assert (await worker.next_datum("", own_client=True)).done
    assert loop.count(DatumState.FAILED) == 1 and loop.count(DatumState.SUCCESS) == 1


async def test_err_cmd_runs_while_the_failed_datum_is_still_shown(tmp_path: Path) -> None:
    loop, fs = _loop(tmp_path, ["a", "b"], tries=1)
    worker = loop.workers[0]
    during: list[tuple[str, str]] = []

    async def err_cmd(record: DatumRecord, env: Mapping[str, str], on: int) -> int:
        assert on == 0
        assert fs.out is not None
        during.append((record.datum.id, env["PACH_DATUM_ID"]))
        shown_view = fs.shown[-1][0]
        assert shown_view is worker._current.view  # type: ignore[union-attr]
        return 0

    loop.configure({"X": "1"}, err_cmd)
    first = await worker.next_datum("", own_client=True)
    await worker.next_datum("broken", own_client=True)
    assert during == [(first.datum_id, first.datum_id)]
    assert loop.queue.record(first.datum_id).state is DatumState.RECOVERED


async def test_a_paused_worker_refuses_calls_until_its_next_process(tmp_path: Path) -> None:
    loop, _ = _loop(tmp_path, ["a", "b"])
    worker = loop.workers[0]
    first = await worker.next_datum("", own_client=False)
    attempt = worker.current_attempt()
    assert await worker.pause(attempt)
    with pytest.raises(WorkerGone):
        await worker.next_datum("", own_client=False)  # a late call of the dying process
    await worker.process_died("user code was killed")
    record = loop.queue.record(first.datum_id)
    assert record.state is DatumState.PENDING and record.error == "user code was killed"
    worker.resume()
    assert worker.process_calls == 0
    retried = await worker.next_datum("", own_client=False)
    assert retried.datum_id == first.datum_id and record.attempts == 2


async def test_a_timeout_for_an_attempt_that_ended_does_not_pause(tmp_path: Path) -> None:
    loop, _ = _loop(tmp_path, ["a", "b"])
    worker = loop.workers[0]
    await worker.next_datum("", own_client=False)
    stale = worker.current_attempt()
    await worker.next_datum("", own_client=False)
    assert not await worker.pause(stale)
    await worker.next_datum("", own_client=False)  # not paused: still served


async def test_abort_drops_the_attempt_and_its_staging(tmp_path: Path) -> None:
    loop, fs = _loop(tmp_path, ["a"])
    worker = loop.workers[0]
    reply = await worker.next_datum("", own_client=True)
    assert fs.out is not None
    staging = fs.out.staging
    assert os.path.isdir(staging)
    await loop.abort("stopped")
    assert not os.path.exists(staging) and worker.idle
    assert loop.queue.record(reply.datum_id).state is DatumState.PENDING
    with pytest.raises(WorkerGone):
        await worker.next_datum("", own_client=True)


async def test_prefetched_datum_is_the_one_presented(tmp_path: Path) -> None:
    loop, _ = _loop(tmp_path, ["a", "b", "c"])
    worker = loop.workers[0]
    async with trio.open_nursery() as nursery:
        loop.start_prefetching(nursery)
        await worker.next_datum("", own_client=True)
        await trio.sleep(0.2)  # b is prepared ahead meanwhile
        second = await worker.next_datum("fail", own_client=True)  # a retry jumps the queue
        third = await worker.next_datum("", own_client=True)
    assert _env(second.env)["r"] == "/pfs/r/a" and _env(third.env)["r"] == "/pfs/r/b"
    await loop.flush()  # a's output leaves its staging
    leftovers = os.listdir(loop.output.workspace.staging_dir(0))
    assert len(leftovers) <= 2  # the current attempt and at most one prepared ahead


def test_queue_hands_a_retry_out_before_anything_else(tmp_path: Path) -> None:
    loop, _ = _loop(tmp_path, ["a", "b"])
    queue = DatumQueue([r.datum for r in loop.records])
    a = queue.take()
    assert a is not None and queue.peek() is not None
    queue.set_state(a, DatumState.RUNNING)
    queue.retry(a)
    assert queue.count(DatumState.PENDING) == 2 and queue.take() is a
    b = queue.take()
    assert b is not None and queue.take() is None and queue.empty
    queue.set_state(b, DatumState.SUCCESS)
    assert queue.closed_count == 1


def test_staging_is_keyed_by_worker(tmp_path: Path) -> None:
    loop, _ = _loop(tmp_path, ["a"])
    ws = loop.output.workspace
    zero, one = loop.output.new_staging(0), loop.output.new_staging(1)
    assert os.path.dirname(zero) == ws.staging_dir(0)
    assert os.path.dirname(one) == ws.staging_dir(1)
    assert zero != one and oct(os.stat(ws.staging_dir(1)).st_mode & 0o777) == "0o700"


def test_workspace_names_everything_and_locks_once(tmp_path: Path) -> None:
    ws = Workspace.of(str(tmp_path), "@proj/p")
    assert ws.root == str(tmp_path / ".pfsmount" / "@proj" / "p")
    assert ws.repo_dir == str(tmp_path / "@proj" / "p")
    assert ws.log_path("j") == os.path.join(ws.logs_dir, "j.jsonl")
    assert ws.run.root == os.path.join(ws.root, "run")
    fd = ws.lock()
    try:
        with pytest.raises(WorkspaceBusy, match=f"pid {os.getpid()}"):
            Workspace.of(str(tmp_path), "@proj/p").lock()
    finally:
        os.close(fd)
    os.close(ws.lock())  # free again once the holder let go


async def test_workers_share_one_queue_and_a_retry_goes_to_any_worker(tmp_path: Path) -> None:
    loop, fs = _loop(tmp_path, ["a", "b"], tries=2, workers=2)
    w0, w1 = loop.workers
    first = await w0.next_datum("", own_client=True)
    second = await w1.next_datum("", own_client=True)
    assert {first.datum_id, second.datum_id} == {r.datum.id for r in loop.records}
    assert fs.by_worker[0][1] is not fs.by_worker[1][1]  # each worker its own /pfs/out
    replies: list[Reply] = []
    async with trio.open_nursery() as nursery:
        async def w1_asks() -> None:
            replies.append(await w1.next_datum("", own_client=True))

        nursery.start_soon(w1_asks)
        await trio.sleep(0.1)
        # b is done and nothing waits, but w0's datum may still come back: w1 waits.
        assert replies == [] and not loop.finished.is_set()
        await w0.pause()
        await w0.process_died("user code was killed")  # a comes back to the queue...
    assert replies[0].datum_id == first.datum_id  # ...and the waiting worker takes it
    assert loop.queue.record(first.datum_id).attempts == 2 and w0.idle
    done = await w1.next_datum("", own_client=True)
    assert done.done and loop.finished.is_set()
    assert loop.count(DatumState.SUCCESS) == 2


async def test_the_job_never_finishes_while_a_worker_prepares_the_last_datum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Taken from the queue, its view still being built (slow under load): the job is not
    # over. Seen in full runs: a datum left pending with 0 attempts, or the job ending "done"
    # while the datum's process still ran.
    loop, _ = _loop(tmp_path, ["a", "b"], workers=2)
    w0, w1 = loop.workers
    first = await w0.next_datum("", own_client=True)
    building, release = trio.Event(), trio.Event()
    prepare = loop.prepare
    token = trio.lowlevel.current_trio_token()

    def slow_prepare(record: DatumRecord, worker: int):  # type: ignore[no-untyped-def]
        trio.from_thread.run_sync(building.set, trio_token=token)
        trio.from_thread.run(release.wait, trio_token=token)
        return prepare(record, worker)

    monkeypatch.setattr(loop, "prepare", slow_prepare)
    loop._prefetch = None  # nothing prepared ahead: w1's datum is built when it asks
    replies: dict[str, Reply] = {}
    async with trio.open_nursery() as nursery:
        async def ask(name: str, worker: Worker) -> None:
            replies[name] = await worker.next_datum("", own_client=True)

        nursery.start_soon(ask, "w1", w1)
        await building.wait()
        # w0 ends its datum and asks again while w1's is still being built: not "done",
        # since w1's datum may yet fail and come back.
        nursery.start_soon(ask, "w0", w0)
        await trio.sleep(0.1)
        try:
            assert "w0" not in replies and not loop.finished.is_set() and not w1.idle
        finally:
            release.set()  # the build thread cannot be cancelled: never leave it waiting
        while "w1" not in replies:
            await trio.sleep(0.01)
        assert replies["w1"].datum_id != first.datum_id and not replies["w1"].done
        assert (await w1.next_datum("", own_client=True)).done
    assert replies["w0"].done and loop.finished.is_set()
    assert loop.count(DatumState.SUCCESS) == 2


async def test_a_datum_that_cannot_be_prepared_fails_its_attempts_and_the_job_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loop, _ = _loop(tmp_path, ["a", "b", "c"], tries=2)
    worker = loop.workers[0]
    prepare = loop.prepare
    failures = {"/a": 99, "/b": 1}  # a: never (a full disk); b: once

    def flaky_prepare(record: DatumRecord, on: int):  # type: ignore[no-untyped-def]
        path = record.datum.inputs[0].path
        if failures.get(path):
            failures[path] -= 1
            raise OSError(28, "No space left on device", "/staging/x")
        return prepare(record, on)

    monkeypatch.setattr(loop, "prepare", flaky_prepare)
    loop._prefetch = None
    seen = []
    reply = await worker.next_datum("", own_client=True)
    while not reply.done:
        seen.append(_env(reply.env)["r"])
        reply = await worker.next_datum("", own_client=True)
    assert seen == ["/pfs/r/b", "/pfs/r/c"]  # b on its second attempt; a never shown
    failed = [r for r in loop.records if r.state is DatumState.FAILED]
    assert len(failed) == 1 and failed[0].attempts == 2
    assert "could not prepare the datum's /pfs" in failed[0].error
    assert "No space left on device" in failed[0].error
    assert loop.count(DatumState.SUCCESS) == 2 and loop.finished.is_set()


async def test_flushes_at_once_never_release_a_datum_before_its_failure_is_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The committer's flush and the job's last one overlapped (seen with a full disk): the
    # last one drained the ids the first had committed, released a datum whose commit had
    # failed before the first applied that failure, and the job died with a KeyError.
    loop, _ = _loop(tmp_path, ["a"])
    (record,) = loop.records
    loop.queue.set_state(record, DatumState.SUCCESS)  # staged; its commit is what fails
    committed: list[str] = []
    order = threading.Lock()
    calls = 0

    class Output:
        pending = True

        def flush(self) -> list[tuple[str, str]]:
            nonlocal calls
            with order:
                calls += 1
                first = calls == 1
                if first:
                    time.sleep(0.1)
                    committed.append(record.datum.id)
            if first:
                time.sleep(0.1)  # the other flush's thread returns first
                return [(record.datum.id, "could not commit its output: disk full")]
            return []

        def drain_committed(self) -> list[str]:
            done = list(committed)
            committed.clear()
            return done

    monkeypatch.setattr(loop, "output", Output())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop.flush)
        await trio.sleep(0.02)
        nursery.start_soon(loop.flush)
    assert record.state is DatumState.FAILED and "disk full" in record.error


async def test_a_paused_worker_stops_waiting_for_work(tmp_path: Path) -> None:
    loop, _ = _loop(tmp_path, ["a"], workers=2)
    w0, w1 = loop.workers
    await w0.next_datum("", own_client=True)
    refused: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        async def w1_waits() -> None:
            try:
                await w1.next_datum("", own_client=True)
            except WorkerGone as exc:
                refused.append(exc)

        nursery.start_soon(w1_waits)
        await trio.sleep(0.05)
        await w1.pause()  # its process died while its call waited
    assert refused and w1.idle
    await w1.process_died("gone")
    assert not loop.finished.is_set()  # w0 still holds a
