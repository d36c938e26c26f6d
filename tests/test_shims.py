"""The shell shims, run as real subprocesses against a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from pfsmount import shims
from pfsmount.protocol import Reply, WorkerServer

PORT_ENV = "PPS_WORKER_GRPC_PORT"
PACHCTL = [sys.executable, "-m", "pfsmount.pachctl"]
NEXT_DATUM = [
    sys.executable,
    "-c",
    "import sys; from pfsmount.shims import next_datum_main; "
    "sys.exit(next_datum_main(sys.argv[1:]))",
]


class FakeWorker:
    """Answers each call with ``reply``; records (error, own_client)."""

    def __init__(self) -> None:
        self.reply = Reply(env=("IN=/pfs/in/a",), datum_id="a")
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, error: str, own_client: bool) -> Reply:
        self.calls.append((error, own_client))
        return self.reply


@pytest.fixture
def worker() -> FakeWorker:
    return FakeWorker()


@pytest.fixture
def server(worker: FakeWorker) -> Iterator[tuple[WorkerServer, int]]:
    server = WorkerServer(worker)
    try:
        yield server, server.start()
    finally:
        server.stop()


@pytest.fixture
def env(server: tuple[WorkerServer, int]) -> dict[str, str]:
    return {**os.environ, PORT_ENV: str(server[1])}


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def env_without_port() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != PORT_ENV}


# --- pachctl next datum --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], ""),
        (["--error", "exit status 2"], "exit status 2"),
        (["--error=boom"], "boom"),
        (["--error", "x", "-v"], "x"),
    ],
)
def test_pachctl_next_datum_calls_the_pachyderm_method(
    env: dict[str, str], worker: FakeWorker, args: list[str], error: str
) -> None:
    done = run([*PACHCTL, "next", "datum", *args], env)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert worker.calls == [(error, False)]


def test_pachctl_blocks_after_the_last_datum(
    env: dict[str, str], worker: FakeWorker, server: tuple[WorkerServer, int]
) -> None:
    worker.reply = Reply(env=(), done=True)
    proc = subprocess.Popen([*PACHCTL, "next", "datum"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(server[0]._parked) == 1)
        time.sleep(0.3)
        assert proc.poll() is None, "pachctl returned after the last datum"
        server[0].stop()
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "UNAVAILABLE" in stderr


def test_pachctl_without_port_fails() -> None:
    done = run([*PACHCTL, "next", "datum"], env_without_port())
    assert done.returncode == 1
    assert "PPS_WORKER_GRPC_PORT is not set" in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "repo"], "only supports `pachctl next datum`"),
        (["next", "job"], "only supports `pachctl next datum`"),
        ([], "no command given"),
        (["next", "datum", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_pachctl_rejects_everything_else(
    argv: list[str], message: str, env: dict[str, str], worker: FakeWorker
) -> None:
    done = run([*PACHCTL, *argv], env)
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert worker.calls == []


def test_pachctl_version() -> None:
    done = run([*PACHCTL, "version"], env_without_port())
    assert done.returncode == 0
    assert "pfsmount" in done.stdout


def test_pachctl_gives_up_dialling_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shims, "PACHCTL_CONNECT_TIMEOUT", 0.3)
    monkeypatch.setenv(PORT_ENV, str(_free_port()))
    started = time.monotonic()
    assert shims.pachctl_main(["next", "datum"]) == 1
    assert 0.3 <= time.monotonic() - started < 3
    assert "could not connect to the pfsmount worker" in capsys.readouterr().err


def test_pachctl_imports_stay_light() -> None:
    code = (
        "import sys, pfsmount.pachctl\n"
        "heavy = {'trio', 'pyfuse3', 'yaml', 'pfsmount.client'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# --- pfsmount next-datum -------------------------------------------------------------------


def test_next_datum_exits_0_then_3(env: dict[str, str], worker: FakeWorker) -> None:
    ready = run([*NEXT_DATUM, "--error", "bad row"], env)
    assert (ready.returncode, ready.stdout, ready.stderr) == (0, "", "")
    worker.reply = Reply(env=(), done=True)
    finished = run(NEXT_DATUM, env)
    assert (finished.returncode, finished.stdout, finished.stderr) == (3, "", "")
    assert worker.calls == [("bad row", True), ("", True)]


def test_next_datum_without_port_fails() -> None:
    done = run(NEXT_DATUM, env_without_port())
    assert done.returncode == 1
    assert "PPS_WORKER_GRPC_PORT is not set" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_next_datum_unreachable_fails() -> None:
    done = run(NEXT_DATUM, {**os.environ, PORT_ENV: str(_free_port())})
    assert done.returncode == 1
    assert "unavailable" in done.stderr


def test_next_datum_bad_args_fail(env: dict[str, str], worker: FakeWorker) -> None:
    done = run([*NEXT_DATUM, "extra"], env)
    assert done.returncode == 1
    assert "unrecognized arguments: extra" in done.stderr
    assert worker.calls == []


def test_next_datum_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert shims.next_datum_main(["--help"]) == 0
    assert "--error" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
