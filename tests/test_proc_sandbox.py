"""What user code sees and cannot escape: PID namespace, private /tmp, PATH, run directory."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import (
    batching_spec,
    finish,
    is_mounted,
    needs_fuse,
    proc_survivors,
    read_tree,
    run_pfsmount,
    start_pfsmount,
    unmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A scratch directory outside /tmp, which a private /tmp would hide from user code."""
    root = Path(tempfile.mkdtemp(prefix="pfsmount-test-", dir="/var/tmp"))
    yield root
    unmount(root / "pfs")
    shutil.rmtree(root, ignore_errors=True)


def _spec(root: Path, name: str, script: str, **top: object) -> Path:
    write_tree(root / "data" / "in", {"a": "a"})
    spec = batching_spec(name, {"pfs": {"repo": "in", "glob": "/*"}}, ["bash", "-c", script],
                         env={"MNT": str(root / "pfs")})
    spec.update(top)
    return write_spec(root / f"{name}.yaml", spec)


def _wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


# Every way a shell detaches a process from its parent and process group. Each one keeps
# trying to write into the mountpoint; left alive after the unmount, it makes the mountpoint
# non-empty and the next run refuses it.
DAEMONS = """
export MARKER={marker}
pester() {{ while true; do touch "$MNT/escaped" 2>/dev/null; sleep 0.1; done; }}
export -f pester
setsid bash -c pester &
( ( bash -c pester & ) & )
nohup bash -c pester >/dev/null 2>&1 &
"""


def test_detached_daemons_end_with_the_job(tmp_path: Path, mnt: Path) -> None:
    marker = f"pfsmount-test-{uuid.uuid4().hex}"
    spec = _spec(tmp_path, "daemons", DAEMONS.format(marker=marker) + """
        while pachctl next datum; do echo "$$" > $MNT/out/pid; done
    """)
    try:
        result = run_pfsmount(spec, tmp_path / "data", mnt)
        assert result.returncode == 0, result
        time.sleep(0.3)  # a survivor would have written into the bare mountpoint by now
        assert proc_survivors(marker) == []
        assert os.listdir(mnt) == []
        # The user code was pid 2 of its own PID namespace (its init is pid 1).
        assert read_tree(tmp_path / "data" / "daemons") == {"pid": b"2\n"}
        again = run_pfsmount(spec, tmp_path / "data", mnt)
        assert again.returncode == 0, again
    finally:
        for pid in proc_survivors(marker):
            os.kill(pid, signal.SIGKILL)


def test_detached_daemons_end_when_pfsmount_is_killed(tmp_path: Path, mnt: Path) -> None:
    marker = f"pfsmount-test-{uuid.uuid4().hex}"
    flag = tmp_path / "second-run"
    spec = _spec(tmp_path, "daemons", DAEMONS.format(marker=marker) + f"""
        while pachctl next datum; do
            [ -e {flag} ] || sleep 1000
            echo done > $MNT/out/x
        done
    """)
    proc = start_pfsmount(spec, tmp_path / "data", mnt)
    try:
        _wait_until(lambda: len(proc_survivors(marker)) >= 4)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        while proc_survivors(marker):
            assert time.monotonic() - killed < 2, f"still alive: {proc_survivors(marker)}"
            time.sleep(0.02)
        # fusermount3's auto_unmount still works with copies of the mount in namespaces
        # (it can take seconds on a loaded machine).
        _wait_until(lambda: not is_mounted(mnt), timeout=15)
        finish(proc, mnt)
        time.sleep(0.3)
        flag.touch()
        again = run_pfsmount(spec, tmp_path / "data", mnt)
        assert again.returncode == 0, again
        assert proc_survivors(marker) == []
        assert read_tree(tmp_path / "data" / "daemons") == {"x": b"done\n"}
    finally:
        proc.kill()
        for pid in proc_survivors(marker):
            os.kill(pid, signal.SIGKILL)


def test_each_job_has_a_private_tmp(outside_tmp: Path) -> None:
    name = f"pfsmount-test-{uuid.uuid4().hex}"
    host_file = Path("/tmp") / name
    # word_count's reduce appends to a file in /tmp: a second run must not count twice.
    spec = _spec(outside_tmp, "counts", f"""
        while pachctl next datum; do
            echo line >> /tmp/{name}
            wc -l < /tmp/{name} > $MNT/out/count
        done
    """, reprocess_spec="every_job")
    data, mnt = outside_tmp / "data", outside_tmp / "pfs"
    try:
        for _ in range(2):
            result = run_pfsmount(spec, data, mnt)
            assert result.returncode == 0, result
            assert read_tree(data / "counts") == {"count": b"1\n"}
            assert not host_file.exists()
            assert not (data / ".pfsmount" / "counts" / "run").exists()
        for expected in (b"1\n", b"2\n"):
            result = run_pfsmount(spec, data, mnt, extra=["--shared-tmp"])
            assert result.returncode == 0, result
            assert read_tree(data / "counts") == {"count": expected}
        assert host_file.read_text() == "line\nline\n"
    finally:
        host_file.unlink(missing_ok=True)


def test_python3_in_cmd_is_the_users_and_still_finds_the_client(tmp_path: Path) -> None:
    user_python = "/usr/bin/python3"
    if not os.path.exists(user_python) or os.path.realpath(user_python) == os.path.realpath(
            sys.executable):
        pytest.skip("needs a python3 in /usr/bin other than pfsmount's")
    write_tree(tmp_path / "data" / "in", {"a": "a", "b": "b"})
    write_script(tmp_path / "which.py", """
        import json, os, sys
        from pfsmount.client import iter_datums
        for datum in iter_datums():
            heavy = sorted({"grpc", "trio", "pyfuse3", "yaml"} & set(sys.modules))
            name = os.path.basename(os.environ["in"])
            with open(os.path.join(os.environ["MNT"], "out", name), "w") as f:
                json.dump({"executable": sys.executable, "heavy": heavy}, f)
    """)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "which", {"pfs": {"repo": "in", "glob": "/*"}}, ["python3", "which.py"],
        env={"MNT": str(tmp_path / "pfs")}))
    # The user's PATH finds Debian's python3, which has none of pfsmount's dependencies.
    result = run_pfsmount(spec, tmp_path / "data", tmp_path / "pfs",
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "mine")})
    assert result.returncode == 0, result
    import json
    seen = [json.loads(v) for v in read_tree(tmp_path / "data" / "which").values()]
    assert len(seen) == 2
    for record in seen:
        assert record["executable"] == user_python
        assert record["heavy"] == []


def test_the_shims_live_in_the_workspace_and_a_rerun_cleans_up(tmp_path: Path,
                                                               mnt: Path) -> None:
    marker = f"pfsmount-test-{uuid.uuid4().hex}"
    flag = tmp_path / "second-run"
    spec = _spec(tmp_path, "shims", f"""
        export MARKER={marker}
        while pachctl next datum; do
            [ -e {flag} ] || sleep 1000
            echo "$PFSMOUNT_WORKER_SOCKET" > $MNT/out/socket
        done
    """)
    data = tmp_path / "data"
    run = data / ".pfsmount" / "shims" / "run"
    proc = start_pfsmount(spec, data, mnt)
    try:
        _wait_until(lambda: proc_survivors(marker))
        environ = Path(f"/proc/{proc_survivors(marker)[0]}/environ").read_bytes().split(b"\0")
        path = next(e for e in environ if e.startswith(b"PATH=")).decode()[5:]
        assert path.split(":")[0] == str(run / "bin")
        assert (run / "bin" / "pachctl").exists()
        assert (run / "bin").stat().st_mode & 0o777 == 0o700
        os.kill(proc.pid, signal.SIGKILL)
        finish(proc, mnt)
        _wait_until(lambda: not proc_survivors(marker))
        (run / "bin" / "stale-from-the-killed-run").touch()
        flag.touch()
        again = run_pfsmount(spec, data, mnt)
        assert again.returncode == 0, again
        assert not run.exists()
        # The socket is in the bin directory (unless that path is too long for a socket).
        socket = read_tree(data / "shims")["socket"].decode().strip()
        assert socket == str(run / "bin" / "worker.sock") or socket.startswith("/run/pfsmount/")
    finally:
        proc.kill()
        for pid in proc_survivors(marker):
            os.kill(pid, signal.SIGKILL)
