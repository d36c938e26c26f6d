"""The compiled `pachctl next datum` (native/pachctl.c) against the real local-socket server.

The binary is compiled from the source here, so the test covers the source whether or not
scripts/setup has built it; it is installed in a bin directory by `shims.write_pachctl`, as
`pfsmount run` does, so its fallback to the Python shim is exercised too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pfsmount import shims
from pfsmount.local import serve_local
from pfsmount.peers import JobPeers
from pfsmount.protocol import Reply, WorkerGone, WorkerRefused
from pfsmount.wire import LOCAL_SOCKET_ENV

SOURCE = Path(shims.__file__).with_name("native") / "pachctl.c"
CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler to build the native shim")


class FakeLoop:
    """Two datums, then done; records (error, own_client)."""

    def __init__(self, refuse: str = "", gone: bool = False) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.refuse = refuse
        self.gone = gone

    async def next_datum(self, error: str, own_client: bool) -> Reply:
        self.calls.append((error, own_client))
        if self.refuse:
            raise WorkerRefused(self.refuse)
        if self.gone:
            raise WorkerGone("the job is over: pfsmount is shutting down")
        if len(self.calls) > 2:
            return Reply(env=(), done=True)
        return Reply(env=(f"N={len(self.calls)}",), datum_id=f"d{len(self.calls)}")


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("native")
    native = root / "pachctl-native"
    subprocess.run([CC, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(native), str(SOURCE)],
                   check=True, capture_output=True, timeout=120)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    assert shims.write_pachctl(str(bin_dir), native=str(native))
    return bin_dir


def _env(socket_path: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (LOCAL_SOCKET_ENV, shims.PORT_ENV)}
    if socket_path is not None:
        env[LOCAL_SOCKET_ENV] = socket_path
    return env


async def _pachctl(bin_dir: Path, args: list[str | bytes], socket_path: str | None,
                   ) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([str(bin_dir / "pachctl"), *args], env=_env(socket_path),
                                  capture_stdout=True, capture_stderr=True, check=False)


def test_the_installed_pachctl_is_compiled(bin_dir: Path) -> None:
    assert (bin_dir / "pachctl").read_bytes()[:4] == b"\x7fELF"
    assert (bin_dir / shims.PYTHON_PACHCTL).read_text().startswith("#!/bin/sh\n")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], ""),
        (["--error", "exit status 2"], "exit status 2"),
        (["--error=boom"], "boom"),
        (["--error", "x", "-v"], "x"),
        (["-v", "next", "--no-color", "datum", "--error", ""], ""),
        # Not UTF-8: the local socket carries the exact bytes (surrogate escapes in Python).
        ([b"--error", b"bad \xff byte"], "bad \udcff byte"),
    ],
)
async def test_next_datum_reports_and_exits_0(
    bin_dir: Path, tmp_path: Path, args: list[str | bytes], error: str
) -> None:
    loop = FakeLoop()
    path = str(tmp_path / "w.sock")
    async with trio.open_nursery() as n:
        await n.start(serve_local, path, loop)
        argv: list[str | bytes] = ["next", "datum", *args] if "next" not in args else args
        done = await _pachctl(bin_dir, argv, path)
        n.cancel_scope.cancel()
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert loop.calls == [(error, False)]


async def test_blocks_after_the_last_datum_and_fails_when_the_job_ends(
    bin_dir: Path, tmp_path: Path
) -> None:
    loop = FakeLoop()
    path = str(tmp_path / "w.sock")
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            await n.start(serve_local, path, loop)
            for _ in range(2):
                assert (await _pachctl(bin_dir, ["next", "datum"], path)).returncode == 0
            # Not tied to the nursery: cancelling the server must not kill it.
            proc = await trio.lowlevel.open_process(
                [str(bin_dir / "pachctl"), "next", "datum"], env=_env(path),
                stderr=subprocess.DEVNULL)
            try:
                await trio.sleep(0.5)
                assert proc.returncode is None, "pachctl returned after the last datum"
            finally:
                # The server going away (pfsmount ending) is an error, never a "next datum".
                n.cancel_scope.cancel()
        await proc.wait()
    assert proc.returncode == 1
    assert len(loop.calls) == 3


@pytest.mark.parametrize(
    ("loop", "message"),
    [
        (FakeLoop(refuse="datum batching not enabled"),
         b"pachctl: NextDatum failed: datum batching not enabled\n"),
        (FakeLoop(gone=True),
         b"pachctl: NextDatum failed: the job is over: pfsmount is shutting down\n"),
    ],
)
async def test_a_refusal_is_exit_1_with_the_workers_message(
    bin_dir: Path, tmp_path: Path, loop: FakeLoop, message: bytes
) -> None:
    path = str(tmp_path / "w.sock")
    async with trio.open_nursery() as n:
        await n.start(serve_local, path, loop)
        done = await _pachctl(bin_dir, ["next", "datum"], path)
        n.cancel_scope.cancel()
    assert (done.returncode, done.stdout, done.stderr) == (1, b"", message)


async def test_a_process_outside_the_job_is_refused(bin_dir: Path, tmp_path: Path) -> None:
    """The compiled shim is checked like any caller: not in the job's tree, no datum."""
    loop = FakeLoop()
    path = str(tmp_path / "w.sock")
    peers = JobPeers()
    peers.follow(lambda: [])  # a job whose user code is none of this test's processes
    async with trio.open_nursery() as n:
        await n.start(serve_local, path, loop, peers)
        done = await _pachctl(bin_dir, ["next", "datum"], path)
        n.cancel_scope.cancel()
    assert done.returncode == 1
    assert b"no process of this job's user code" in done.stderr
    assert loop.calls == []


async def test_no_worker_is_exit_1_naming_the_socket(bin_dir: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "gone.sock")
    done = await _pachctl(bin_dir, ["next", "datum"], path)
    assert done.returncode == 1
    assert done.stderr == (f"pachctl: NextDatum failed: pfsmount's worker socket {path}: "
                           "[Errno 2] No such file or directory\n").encode()


@pytest.mark.parametrize(
    ("args", "code", "stream", "expected"),
    [
        (["version"], 0, "stdout", "pfsmount"),
        (["list", "repo"], 1, "stderr", "only supports `pachctl next datum`"),
        (["next", "job"], 1, "stderr", "only supports `pachctl next datum`"),
        ([], 1, "stderr", "no command given"),
        (["next", "datum", "--bogus"], 1, "stderr", "unrecognized arguments: --bogus"),
        (["next", "datum", "extra"], 1, "stderr", "only supports `pachctl next datum`"),
        (["connect", "grpc://x"], 0, "stderr", "ignored `pachctl connect`"),
        (["next", "datum", "--help"], 0, "stdout", "--error"),
    ],
)
async def test_everything_else_is_the_python_shims(
    bin_dir: Path, tmp_path: Path, args: list[str], code: int, stream: str, expected: str
) -> None:
    loop = FakeLoop()
    path = str(tmp_path / "w.sock")
    async with trio.open_nursery() as n:
        await n.start(serve_local, path, loop)
        done = await _pachctl(bin_dir, args, path)
        n.cancel_scope.cancel()
    assert done.returncode == code, done
    assert expected in getattr(done, stream).decode()
    assert loop.calls == []


async def test_without_the_local_socket_it_is_the_python_shim(bin_dir: Path) -> None:
    done = await _pachctl(bin_dir, ["next", "datum"], None)
    assert done.returncode == 1
    assert b"PPS_WORKER_GRPC_PORT is not set" in done.stderr


def test_write_pachctl_falls_back_to_the_python_shim(tmp_path: Path) -> None:
    assert not shims.write_pachctl(str(tmp_path), native=str(tmp_path / "missing"))
    script = (tmp_path / "pachctl").read_text()
    assert script == f'#!/bin/sh\nexec "{sys.executable}" -m pfsmount.pachctl "$@"\n'
