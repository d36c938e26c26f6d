"""Which sandbox a job's user code gets, and where its run directory puts things."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from pfsmount import sandbox
from pfsmount.sandbox import RunDir, Sandbox, choose, local_socket_path, run_dir


def _choose(rundir: RunDir, monkeypatch: pytest.MonkeyPatch, probe: str | None, **kw) -> Sandbox:
    async def fake_probe() -> str | None:
        return probe

    monkeypatch.setattr(sandbox, "probe_namespaces", fake_probe)
    return trio.run(lambda: choose(rundir, **kw))


def test_without_namespaces_it_says_why_and_uses_the_process_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        chosen = _choose(run_dir(str(tmp_path)), monkeypatch, "unshare: Operation not permitted",
                         shared_tmp=False, needed=["/srv/pfs"])
    assert chosen == Sandbox()
    assert chosen.reaper_args() == []
    assert "unshare: Operation not permitted" in caplog.text
    assert "outlive the job" in caplog.text


def test_private_tmp_unless_opted_out_or_it_would_hide_a_needed_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rundir = RunDir("/srv/data/.pfsmount/p/run")
    private = _choose(rundir, monkeypatch, None, shared_tmp=False, needed=["/srv/pfs"])
    assert private.reaper_args() == ["--pidns", "--tmp", rundir.tmp_dir(0)]
    assert rundir.tmp_dir(0) == "/srv/data/.pfsmount/p/run/tmp/0"
    shared = _choose(rundir, monkeypatch, None, shared_tmp=True, needed=["/srv/pfs"])
    assert shared.reaper_args() == ["--pidns"]
    hidden = _choose(rundir, monkeypatch, None, shared_tmp=False, needed=["/tmp/x/pfs"])
    assert hidden.reaper_args() == ["--pidns"]


def test_the_run_directory_is_made_afresh(tmp_path: Path) -> None:
    rundir = run_dir(str(tmp_path / "work"))
    os.makedirs(os.path.join(rundir.root, "bin"))
    Path(rundir.root, "bin", "left-by-a-killed-run").touch()
    rundir.create()
    assert os.listdir(rundir.bin_dir) == []
    assert os.stat(rundir.root).st_mode & 0o777 == 0o700
    assert os.stat(rundir.bin_dir).st_mode & 0o777 == 0o700
    assert os.stat(rundir.tmp_dir(0)).st_mode & 0o7777 == 0o1777
    assert os.path.isfile(os.path.join(rundir.python_dir, "pfsmount", "client.py"))
    rundir.remove()
    assert not os.path.exists(rundir.root)


def test_a_socket_path_too_long_for_sun_path_gets_a_short_private_one(tmp_path: Path) -> None:
    deep = str(tmp_path / ("d" * 120) / "run" / "bin")
    path = local_socket_path(deep)
    assert len(os.fsencode(path)) <= 107
    assert path == local_socket_path(deep)  # the next run finds a leftover
    rundir = RunDir(os.path.dirname(deep))
    rundir.create()
    try:
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    finally:
        rundir.remove()
    assert not os.path.exists(os.path.dirname(path))
    assert local_socket_path("/srv/bin") == "/srv/bin/worker.sock"
