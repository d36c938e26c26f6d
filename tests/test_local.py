"""The worker's local socket, served by the real trio server, called by the real client."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from pfsmount.local import serve_local
from pfsmount.protocol import Reply, WorkerGone, WorkerRefused
from pfsmount.wire import ASK_PACHYDERM, LocalCallError, LocalWorker


class FakeLoop:
    """Stands in for DatumLoop: two datums, then done; records what it was told."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.refuse = refuse

    async def next_datum(self, error: str, own_client: bool) -> Reply:
        self.calls.append((error, own_client))
        if self.refuse:
            raise WorkerRefused("datum batching not enabled")
        if len(self.calls) > 3:
            raise WorkerGone("the job is over")
        if len(self.calls) > 2:
            return Reply(env=(), done=True)
        return Reply(env=(f"N={len(self.calls)}",), datum_id=f"d{len(self.calls)}")


async def _call(worker: LocalWorker, *args: object):
    return await trio.to_thread.run_sync(lambda: worker.next_datum(*args))


async def test_pfsmount_kind_gets_datums_then_done(tmp_path: Path) -> None:
    loop = FakeLoop()
    path = str(tmp_path / "w.sock")
    async with trio.open_nursery() as n:
        await n.start(serve_local, path, loop)
        worker = LocalWorker(path)
        first = await _call(worker, "")
        second = await _call(worker, "it broke")
        third = await _call(worker, "")
        with pytest.raises(LocalCallError, match="the job is over"):
            await _call(worker, "")
        worker.close()
        n.cancel_scope.cancel()
    assert (first.datum_id, first.env, first.done) == ("d1", ("N=1",), False)
    assert second.datum_id == "d2" and third.done
    assert loop.calls[:3] == [("", True), ("it broke", True), ("", True)]


async def test_pachyderm_kind_is_never_answered_after_the_last_datum(tmp_path: Path) -> None:
    loop = FakeLoop()
    path = str(tmp_path / "w.sock")
    async with trio.open_nursery() as n:
        await n.start(serve_local, path, loop)
        worker = LocalWorker(path)
        for _ in range(2):
            await _call(worker, "", ASK_PACHYDERM)
        with trio.move_on_after(0.5) as waited:
            await trio.to_thread.run_sync(lambda: worker.next_datum("", ASK_PACHYDERM),
                                          abandon_on_cancel=True)
        assert waited.cancelled_caught  # still blocked, as with Pachyderm
        n.cancel_scope.cancel()
    worker.close()
    assert all(own is False for _, own in loop.calls)


async def test_refusal_reaches_the_caller_verbatim(tmp_path: Path) -> None:
    path = str(tmp_path / "w.sock")
    async with trio.open_nursery() as n:
        await n.start(serve_local, path, FakeLoop(refuse=True))
        worker = LocalWorker(path)
        with pytest.raises(LocalCallError, match=r"^datum batching not enabled$"):
            await _call(worker, "")
        worker.close()
        n.cancel_scope.cancel()


def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LocalCallError, match=r"worker socket .*w\.sock"):
        LocalWorker(str(tmp_path / "w.sock")).next_datum("")
