"""How long user code lives: as long as its job needs it, never longer than pfsmount."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from support import (
    batching_spec,
    finish,
    needs_fuse,
    proc_survivors,
    read_tree,
    start_pfsmount,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse


def _job(root: Path, name: str, script: str, *, batching: bool = True) -> tuple[Path, Path, Path]:
    data, mnt = root / "data", root / "pfs"
    write_tree(data / "in", {"a": "a"})
    spec = batching_spec(name, {"pfs": {"repo": "in", "glob": "/*"}}, ["bash", "-c", script],
                         env={"MNT": str(mnt)})
    spec["transform"]["datum_batching"] = batching
    return write_spec(root / "p.yaml", spec), data, mnt


def test_user_code_may_run_longer_than_ten_seconds(tmp_path: Path) -> None:
    # Regression: the reaper's parent-death signal fired when trio retired the worker thread
    # that had started it (after ~10 s idle), killing any datum or start-up that took longer.
    jobs = {
        "long-datum": ("while pachctl next datum; do sleep 60; echo ok > $MNT/out/x; done", True),
        "slow-start": ("sleep 30; while pachctl next datum; do echo ok > $MNT/out/x; done", True),
        "classic": ("sleep 30; echo ok > $MNT/out/x", False),
    }
    started = {}
    for name, (script, batching) in jobs.items():
        spec, data, mnt = _job(tmp_path / name, name, script, batching=batching)
        started[name] = (start_pfsmount(spec, data, mnt), data, mnt)
    for name, (proc, data, mnt) in started.items():
        result = finish(proc, mnt, timeout=150)
        assert result.returncode == 0, f"{name}: {result}"
        assert "SIGKILL" not in result.stderr, f"{name}: {result}"
        assert read_tree(data / name) == {"x": b"ok\n"}, name


def test_kill_9_of_pfsmount_takes_user_code_down_at_once(tmp_path: Path) -> None:
    marker = f"pfsmount-test-{uuid.uuid4().hex}"
    spec, data, mnt = _job(tmp_path, "victim", f"""
        export MARKER={marker}
        sleep 1000 &
        while pachctl next datum; do touch $MNT/out/started; sleep 1000; done
    """)
    proc = start_pfsmount(spec, data, mnt)
    try:
        deadline = time.monotonic() + 30
        while not (mnt / "out" / "started").exists():
            assert time.monotonic() < deadline, "the user code never started"
            time.sleep(0.05)
        time.sleep(0.5)  # `pachctl next datum` has returned
        first = set(proc_survivors(marker))
        time.sleep(11)  # past the age at which trio retires the thread that started it
        assert first <= set(proc_survivors(marker)), "user code died while pfsmount lived"
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        while proc_survivors(marker):
            assert time.monotonic() - killed < 2, f"still alive: {proc_survivors(marker)}"
            time.sleep(0.02)
    finally:
        proc.kill()
        for pid in proc_survivors(marker):
            os.kill(pid, signal.SIGKILL)
        finish(proc, mnt)
