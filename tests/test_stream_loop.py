"""The job loop fed while the repos are listed, without a kernel mount.

A fake file system stands in for FUSE; the ledger, the output repo and the producer thread
are real. Covers: datums handed out before the listing ends, the sweep of datums the input
no longer produces (at the listing's end, not before the first datum), and a datum that
writes a path such a vanished datum owned waiting for that sweep instead of failing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import trio

from pfsmount.datums import Datum, iter_datums, open_repos
from pfsmount.ledger import Ledger
from pfsmount.output import OutputRepo
from pfsmount.plan import Producer, begin_job
from pfsmount.queue import DatumState
from pfsmount.spec import parse_spec
from pfsmount.worker import DatumLoop
from pfsmount.workspace import Workspace
from test_workers_loop import FakeFs

SPEC = parse_spec("""
pipeline: {name: p}
input: {pfs: {repo: r, glob: "/*"}}
transform: {cmd: ["true"], datum_batching: true}
""")


async def _job(data: Path, stream: Iterator[Datum] | None = None,
               *, gate: threading.Event | None = None
               ) -> tuple[DatumLoop, FakeFs, Producer, Ledger, OutputRepo]:
    ws = Workspace.of(str(data), "p")
    ws.create()
    ledger = Ledger(ws.ledger_path)
    output = OutputRepo(str(data), "p", ledger)
    plan = await trio.to_thread.run_sync(begin_job, SPEC, output, ledger, "")
    repos = open_repos(SPEC.input, str(data))

    def datums() -> Iterator[Datum]:
        yield from iter_datums(SPEC.input, repos)
        if gate is not None:
            gate.wait(30)  # the listing "goes on" until the test lets it end

    fs = FakeFs()
    loop = DatumLoop((), repos, fs, output, "/pfs", listing=True)  # type: ignore[arg-type]
    loop.configure({}, None)
    output.hasher = lambda datum_id: "h" + datum_id[:8]
    return loop, fs, Producer(plan, SPEC, repos, datums, ledger, output, loop), ledger, output


async def _write(fs: FakeFs, name: str, text: str) -> None:
    assert fs.out is not None
    Path(fs.out.staging, name).write_text(text)


async def test_a_renamed_input_takes_over_the_output_of_the_datum_that_vanished(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "r" / "old").mkdir(parents=True)
    (data / "r" / "old" / "f").write_text("x")
    loop, fs, producer, ledger, output = await _job(data)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer.run)
        worker = loop.workers[0]
        reply = await worker.next_datum("", own_client=True)
        await _write(fs, "summary", "old")
        assert (await worker.next_datum("", own_client=True)).done
    await loop.flush()
    assert (data / "p" / "summary").read_text() == "old"
    ledger.close()

    (data / "r" / "old").rename(data / "r" / "new")
    gate = threading.Event()
    loop, fs, producer, ledger, output = await _job(data, gate=gate)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer.run)
        worker = loop.workers[0]
        reply = await worker.next_datum("", own_client=True)  # before the listing ended
        assert not loop.queue.complete
        await _write(fs, "summary", "new")
        ended: list[bool] = []

        async def close_it() -> None:
            ended.append((await worker.next_datum("", own_client=True)).done)

        nursery.start_soon(close_it)
        await trio.sleep(0.3)
        # "summary" is the vanished datum's until the listing has ended: the datum waits.
        assert ended == [] and loop.queue.record(reply.datum_id).state is DatumState.RUNNING
        gate.set()
    assert ended == [True]
    assert loop.count(DatumState.SUCCESS) == 1 and loop.count(DatumState.FAILED) == 0
    await loop.flush()
    assert (data / "p" / "summary").read_text() == "new"
    assert ledger.known_datums() == {reply.datum_id}
    assert ledger.job(output.job_id)["total"] == 1  # type: ignore[index]
    ledger.close()


async def test_records_are_released_once_committed_and_the_total_known_at_the_end(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(30):
        (data / "r" / f"d{i:02}").mkdir(parents=True)
        (data / "r" / f"d{i:02}" / "f").write_text("x")
    gate = threading.Event()
    loop, _fs, producer, ledger, output = await _job(data, gate=gate)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer.run)
        worker = loop.workers[0]
        reply = await worker.next_datum("", own_client=True)
        seen: set[str] = set()
        calls = 0
        while not reply.done:
            calls += 1
            seen.add(reply.datum_id)
            if len(seen) == 30 and not gate.is_set():
                # Every datum is out, and the listing has not ended: the job goes on.
                assert not loop.queue.complete and not loop.finished.is_set()
                gate.set()
            await loop.flush()
            failing = reply.datum_id in list(sorted(seen))[:3]
            reply = await worker.next_datum("boom" if failing else "", own_client=True)
    await loop.flush()
    assert loop.queue.complete and len(loop.queue) == 30
    # Only the troubled datums (failed after 3 tries) are still held.
    assert {r.state for r in loop.queue.records} <= {DatumState.FAILED}
    assert len(loop.queue.troubled) == loop.count(DatumState.FAILED) > 0
    assert ledger.job(output.job_id)["total"] == 30  # type: ignore[index]
    ledger.close()
