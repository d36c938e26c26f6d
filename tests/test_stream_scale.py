"""A million files: list-datums starts at once and its memory stays flat (issue 18).

The repo is 1,000 directories of 1,000 empty files on tmpfs (made with mknod, a few seconds).
The bounds are generous sanity checks for a loaded 2-core machine; the targets themselves
(first datum within ~1 s, <= 300 MB at 10M files) are measured by `scripts/bench --only scale`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import PY, batching_spec, finish, start_pfsmount, write_spec

DIRS, PER_DIR = 1000, 1000


@pytest.fixture(scope="module")
def million() -> Iterator[Path]:
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("needs a writable tmpfs at /dev/shm to create 1M files quickly")
    data = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="pfsmount-stream-"))
    try:
        repo = os.fspath(data / "big")
        os.mkdir(repo)
        mode = stat.S_IFREG | 0o644
        for d in range(DIRS):
            sub = f"{repo}/d{d:04}"
            os.mkdir(sub)
            for f in range(PER_DIR):
                os.mknod(f"{sub}/f{f:04}", mode)
        write_spec(data / "p.yaml", {"pipeline": {"name": "p"},
                                     "input": {"pfs": {"repo": "big", "glob": "/*/*"}},
                                     "transform": {"cmd": ["true"]}})
        yield data
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _list(data: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, "-m", "pfsmount", "list-datums", str(data / "p.yaml"),
                             "--data", str(data), *extra], stdout=subprocess.PIPE)


def _peak_rss_mb(proc: subprocess.Popen[bytes]) -> float:
    """The child's own peak RSS, sampled from its VmHWM until it exits.

    Not wait4's ru_maxrss: a forked child's counts the RSS it had before exec, i.e. pytest's
    own size at fork time (578 MB late in the whole suite, for a 48 MB list-datums)."""
    peak = 0.0
    while proc.poll() is None:
        with contextlib.suppress(OSError, AssertionError):  # gone, or a zombie already
            peak = max(peak, _vm_peak_mb(proc.pid))
        time.sleep(0.02)
    return peak


def test_million_files_first_line_at_once_and_flat_memory(million: Path) -> None:
    start = time.monotonic()
    proc = _list(million, "--json")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    first_at = time.monotonic() - start
    second = proc.stdout.readline()
    proc.kill()
    proc.stdout.close()
    proc.wait()
    assert b'"path": "/d0000/f0000"' in first and b'"path": "/d0000/f0001"' in second
    # Before: ~11 s and ~1 GB to list 1M files before the first line.
    assert first_at < 5, f"first line after {first_at:.1f}s"

    start = time.monotonic()
    proc = _list(million, "--count")
    assert proc.stdout is not None
    peak = _peak_rss_mb(proc)  # while it runs: its one line of output never fills the pipe
    out = proc.stdout.read()
    total = time.monotonic() - start
    assert proc.returncode == 0
    assert out == b"%d\n" % (DIRS * PER_DIR)
    assert 0 < peak < 200, f"list-datums --count of 1M files peaked at {peak:.0f} MB"
    print(f"1M files: first line {first_at:.2f}s, count in {total:.1f}s, peak {peak:.0f} MB")


def _vm_peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_million_files_run_reaches_the_first_datum_at_once(million: Path, tmp_path: Path
                                                          ) -> None:
    mark = tmp_path / "first"
    mnt = tmp_path / "mnt"
    spec = write_spec(tmp_path / "run.yaml", batching_spec(
        "p", {"pfs": {"repo": "big", "glob": "/*/*"}},
        ["sh", "-c", f"pachctl next datum && cp {mnt}/.env {mark}.tmp && mv {mark}.tmp {mark} "
                     "&& exec sleep 600"]))
    start = time.monotonic()
    proc = start_pfsmount(spec, million, mnt)
    try:
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() - start < 30, "no first datum after 30 s"
            time.sleep(0.02)
        first_at = time.monotonic() - start
        peak = _vm_peak_mb(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        done = finish(proc, mnt)
    assert "big=" in mark.read_text() and "/d0000/f0000" in mark.read_text()
    assert done.returncode == 143, done.err
    # Before: ~11 s and ~1.2 GB for 1M files. Generous bounds for a loaded machine.
    assert first_at < 8, f"first datum after {first_at:.1f}s"
    assert peak < 250, f"pfsmount peaked at {peak:.0f} MB before its first datum"
    print(f"1M files: first datum in user code after {first_at:.2f}s, peak {peak:.0f} MB")
