"""pfsmount's Python client for user code, against a real server with a scripted worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pfsmount import client
from pfsmount.client import (
    ClientError,
    Datum,
    batch_datums,
    iter_datums,
    next_datum,
    report_error,
    reporting_errors,
)
from pfsmount.protocol import Reply, WorkerServer


class ScriptedWorker:
    """Answers with ``replies`` in order, then "done" forever; records the errors it gets."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.errors: list[str] = []

    def __call__(self, error: str, own_client: bool) -> Reply:
        assert own_client
        self.errors.append(error)
        return self.replies.pop(0) if self.replies else Reply(env=(), done=True)


@pytest.fixture(autouse=True)
def fresh_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A new client session per test, and os.environ restored whatever datums() set."""
    monkeypatch.setattr(client, "_session", client._Session())
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def worker() -> ScriptedWorker:
    return ScriptedWorker(
        Reply(env=("IN=/pfs/in/a", "ONLY_FIRST=1"), datum_id="a"),
        Reply(env=("IN=/pfs/in/b", "X=has=equals"), datum_id="b"),
        Reply(env=("IN=/pfs/in/c",), datum_id="c"),
    )


@pytest.fixture
def port(worker: ScriptedWorker, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    server = WorkerServer(worker)
    try:
        port = server.start()
        monkeypatch.setenv(client.PORT_ENV, str(port))
        yield port
    finally:
        server.stop()


@pytest.mark.usefixtures("port")
def test_next_datum_returns_each_datum_then_none(worker: ScriptedWorker) -> None:
    first = next_datum()
    assert first == Datum(id="a", env={"IN": "/pfs/in/a", "ONLY_FIRST": "1"})
    second = next_datum(error="it broke")
    assert second is not None
    assert second.env["X"] == "has=equals"
    assert next_datum() is not None
    assert next_datum() is None
    assert worker.errors == ["", "it broke", "", ""]


@pytest.mark.usefixtures("port")
def test_the_channel_is_reused_across_calls() -> None:
    next_datum()
    channel = client._session.channel
    next_datum()
    assert channel is not None
    assert client._session.channel is channel


@pytest.mark.usefixtures("port")
def test_datums_applies_env_and_removes_stale_keys() -> None:
    seen = []
    for datum in iter_datums():
        seen.append((datum.id, os.environ["IN"], "ONLY_FIRST" in os.environ))
    assert seen == [("a", "/pfs/in/a", True), ("b", "/pfs/in/b", False), ("c", "/pfs/in/c", False)]
    assert "X" not in os.environ


@pytest.mark.usefixtures("port")
def test_reporting_errors_fails_the_datum_and_carries_on(
    worker: ScriptedWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    for datum in iter_datums():
        with reporting_errors():
            if datum.id == "b":
                raise ValueError("bad input")
    assert worker.errors == ["", "", "ValueError('bad input')", ""]
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.usefixtures("port")
def test_report_error_by_hand(worker: ScriptedWorker) -> None:
    for datum in iter_datums():
        if datum.id == "a":
            report_error("no rows")
        elif datum.id == "c":
            report_error(KeyError("k"))
    assert worker.errors == ["", "no rows", "", "KeyError('k')"]


def test_report_error_without_a_datum_says_so() -> None:
    with pytest.raises(ClientError, match="no datum is current"):
        report_error("too early")


@pytest.mark.usefixtures("port")
def test_batch_datums_reports_exceptions_and_counts(
    worker: ScriptedWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    @batch_datums
    def process(prefix: str) -> None:
        seen.append(prefix + os.environ["IN"])
        if os.environ["IN"].endswith("a"):
            raise RuntimeError("first one fails")

    assert process("in:") == 3
    assert seen == ["in:/pfs/in/a", "in:/pfs/in/b", "in:/pfs/in/c"]
    assert worker.errors == ["", "RuntimeError('first one fails')", "", ""]
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "first one fails" in err
    assert process.__name__ == "process"


@pytest.mark.usefixtures("port")
@pytest.mark.parametrize("exit_exc", [KeyboardInterrupt, SystemExit])
def test_batch_datums_lets_interrupts_through(
    worker: ScriptedWorker, exit_exc: type[BaseException]
) -> None:
    @batch_datums
    def process() -> None:
        raise exit_exc

    with pytest.raises(exit_exc):
        process()
    assert worker.errors == [""]


def test_unset_port_says_to_use_pfsmount_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(client.PORT_ENV, raising=False)
    with pytest.raises(ClientError, match=r"PPS_WORKER_GRPC_PORT is not set: run this program"):
        next_datum()


def test_bad_port_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(client.PORT_ENV, "eighty")
    with pytest.raises(ClientError, match="'eighty' is not a TCP port"):
        next_datum()


def test_unreachable_worker_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(client.PORT_ENV, str(_free_port()))
    with pytest.raises(ClientError, match="is unavailable"):
        next_datum()


@pytest.mark.usefixtures("port")
def test_package_exports_the_client() -> None:
    from pfsmount import batch_datums as exported_batch_datums
    from pfsmount import iter_datums as exported_datums
    from pfsmount import next_datum as exported_next_datum

    assert exported_batch_datums is batch_datums
    assert exported_datums is iter_datums
    assert exported_next_datum is next_datum


def test_imports_stay_light() -> None:
    code = (
        "import sys, pfsmount\n"
        "assert 'grpc' not in sys.modules, 'import pfsmount pulled in grpc'\n"
        "from pfsmount import batch_datums\n"
        "heavy = {'trio', 'pyfuse3', 'yaml'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
