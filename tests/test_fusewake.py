"""A FUSE request withdrawn between "readable" and pyfuse3's read must not hang pfsmount.

The end of a job kills user code, which may be in the middle of a request; under load this
once left pfsmount blocked for good in a read of /dev/fuse (see pfsmount/fusewake.py). The
window is microseconds wide, so gdb holds pfsmount in it: stopped on its way into that read,
the requester is SIGKILLed (the kernel takes its request back), then pfsmount goes on.
Needs gdb 13 ($_shell), so the stop is for that request and no earlier one. Run on both receive
loops: pyfuse3's trio loop (its read is `fuse_session_receive_buf`) and the patched build's C
receive thread (its read is a `splice` from /dev/fuse, after `poll`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyfuse3
import pytest

from support import batching_spec, finish, needs_fuse, start_pfsmount, write_spec, write_tree

pytestmark = [
    needs_fuse,
    pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb to widen the window"),
]


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.05)


def _wait_until_traced_and_running(pid: int, tracer: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "gdb did not attach and continue pfsmount"
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            states.append((fields["TracerPid"].strip(), fields["State"].split()[0]))
        if all(t == str(tracer) and st != "t" for t, st in states):
            time.sleep(0.5)  # past `continue`: the breakpoint is inserted before threads run
            return
        time.sleep(0.05)


@pytest.mark.parametrize(("fast_path", "read_call"), [
    pytest.param("0", "fuse_session_receive_buf", id="trio-loop"),
    pytest.param("1", "splice", id="receive-thread", marks=pytest.mark.skipif(
        getattr(pyfuse3, "PFSMOUNT_PATCH", 0) < 6, reason="needs the patched pyfuse3 ≥ 6")),
])
def test_a_withdrawn_request_does_not_hang_the_job(tmp_path: Path, mnt: Path, fast_path: str,
                                                   read_call: str) -> None:
    write_tree(tmp_path / "data" / "in", {"a": "a"})
    ready, flag, requester = tmp_path / "ready", tmp_path / "flag", tmp_path / "requester"
    # After its output the user code touches /pfs no more: nothing else would wake the read.
    script = (f"while pachctl next datum; do echo done > $MNT/out/x; touch {ready}; "
              f"while [ ! -e {flag} ]; do sleep 0.05; done; done")
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "w", {"pfs": {"repo": "in", "glob": "/*"}}, ["bash", "-c", script],
        env={"MNT": str(mnt)}))
    proc = start_pfsmount(spec, tmp_path / "data", mnt, env={"PFSMOUNT_FAST": fast_path})
    gdb = stat = None
    try:
        _wait_for(ready)
        time.sleep(1)  # the kernel's own requests after the write (release) are answered
        gdb = subprocess.Popen(
            ["gdb", "-p", str(proc.pid), "-batch", "-ex",
             f'break {read_call} if $_shell("test -e {requester}") == 0',
             "-ex", "continue", "-ex", f"shell kill -9 $(cat {requester})", "-ex", "delete",
             "-ex", "detach"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # The breakpoint is in once gdb has attached and continued every thread (a fixed
        # sleep was too short under load: the stat was answered before the breakpoint).
        _wait_until_traced_and_running(proc.pid, gdb.pid)
        stat = subprocess.Popen(["sh", "-c", f'echo $$ > {requester}; exec stat {mnt}/nothing'],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out, _ = gdb.communicate(timeout=60)
        assert "hit Breakpoint 1" in out, out
        stat.wait(timeout=10)
        assert stat.returncode == -signal.SIGKILL, "the request was answered, not withdrawn"
        flag.touch()
        result = finish(proc, mnt, timeout=30)
        assert result.returncode == 0, result
        assert (tmp_path / "data" / "w" / "x").read_text() == "done\n"
    finally:
        for p in (gdb, stat):
            if p is not None and p.poll() is None:
                p.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
