"""The byte path of /pfs (issue 14): READ answered from the file's fd and WRITE moved into the
staging fd by the patched pyfuse3's receive thread (in C: READ by pread, WRITE spliced from the
pipe it was received in), by its trio loop (splice both ways, `PFSMOUNT_FAST=0`), or through
Python bytes (`PFSMOUNT_SPLICE=0`).

One real job per transport runs the same user code: whole and partial reads of an input (the
mount's page cache dropped before each, so every one reaches pfsmount), a file of the first
datum still read after the swap to the second, writes at offsets with fsync, and the output read
back through /pfs/out. pfsmount's system calls are traced meanwhile: that proves which path
served the bytes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pyfuse3
import pytest

from pfsmount import fs
from pfsmount.fs import splice_max_write, splice_possible
from support import (
    batching_spec,
    finish,
    needs_fuse,
    start_pfsmount,
    wait_for_staged,
    write_script,
    write_spec,
    write_tree,
)

MIB = 1 << 20
SIZE = 3 * MIB + 12345  # ends mid-page, so the last READ is short
spliced = pytest.mark.skipif(getattr(pyfuse3, "PFSMOUNT_PATCH", 0) < 3,
                             reason="needs pfsmount's patched pyfuse3 ≥ 3 (scripts/setup)")
fast = pytest.mark.skipif(getattr(pyfuse3, "PFSMOUNT_PATCH", 0) < 6,
                          reason="needs pfsmount's patched pyfuse3 ≥ 6 (scripts/setup)")

USER_CODE = """
    import json, os, time
    from pfsmount import iter_datums

    MIB = 1 << 20
    SIZE = {size}
    PIECES = [(0, 1), (1, 4095), (4095, 2), (4097, MIB), (MIB - 3, 7), (SIZE - 10, 100),
              (SIZE, 10), (SIZE + 5000, 10)]

    def uncached(fd):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next read must ask pfsmount
        return fd

    held = -1
    for d in iter_datums():
        name = os.path.basename(d.env["in"])
        out = os.path.join(os.path.dirname(os.path.dirname(d.env["in"])), "out")
        f = d.env["in"] + "/f"
        if name == "d1":
            open(out + "/ready", "w").close()
            while not os.path.exists(out + "/go"):  # the test traces pfsmount from here
                time.sleep(0.05)
            os.unlink(out + "/go")
            os.unlink(out + "/ready")
            held = os.open(f, os.O_RDONLY)
            with open(f, "rb", buffering=0) as r:
                uncached(r.fileno())
                whole = r.read()
            pieces = {f"{o}:{n}": os.pread(uncached(held), n, o).hex() for o, n in PIECES}
            with open(out + "/pieces.json", "w") as p:
                json.dump(pieces, p)
            with open(out + "/big", "wb", buffering=0) as o:
                for i in range(0, len(whole), MIB):
                    o.write(whole[i:i + MIB])
                os.pwrite(o.fileno(), b"XYZ", 12345)
                os.pwrite(o.fileno(), b"tail", len(whole) + 100)  # past the end: a hole
                os.fsync(o.fileno())
            with open(out + "/big", "rb", buffering=0) as b:
                back = os.pread(uncached(b.fileno()), 2 * len(whole), 0)
            with open(out + "/back", "wb") as b:
                b.write(back)
            for _ in range(2):  # O_APPEND (a handle's fd keeps it): placed at the end
                with open(out + "/appended", "ab", buffering=0) as a:
                    a.write(whole)
        else:
            # d1's file, still open: its inode reads d1's bytes after the swap.
            old = os.pread(uncached(held), SIZE + 1, 0)
            os.close(held)
            with open(f, "rb") as r:
                new = r.read()
            with open(out + "/old", "wb") as o:
                o.write(old)
            with open(out + "/new", "wb") as o:
                o.write(new)
"""


def _content(seed: int) -> bytes:
    block = bytes((i * 7 + seed) % 251 for i in range(4096 * 3 + 1))
    return (block * (SIZE // len(block) + 1))[:SIZE]


def _trace(pid: int, log: Path) -> subprocess.Popen[str]:
    """strace on pfsmount's data syscalls, once it is attached."""
    proc = subprocess.Popen(
        ["strace", "-f", "-e", "trace=splice,pread64,pwrite64", "-o", str(log), "-p", str(pid)],
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "strace: Process N attached"
    assert "attached" in line, line
    return proc


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _big_syscalls(log: Path) -> dict[str, int]:
    """How many splice/pread64/pwrite64 calls moved at least 64 KiB."""
    counts = {"splice": 0, "pread64": 0, "pwrite64": 0}
    for line in log.read_text().splitlines():
        m = re.search(r"\b(splice|pread64|pwrite64)\(.*\)\s+=\s+(\d+)$", line)
        if m and int(m.group(2)) >= 64 * 1024:
            counts[m.group(1)] += 1
    return counts


@needs_fuse
@pytest.mark.parametrize(("no_open", "splice", "fast_path"), [
    pytest.param("1", "1", "1", marks=fast, id="fast-splice"),
    pytest.param("1", "0", "1", marks=fast, id="fast-bytes"),
    pytest.param("1", "1", "0", marks=spliced, id="trio-splice"),
    pytest.param("1", "0", "0", marks=spliced, id="trio-bytes"),
    pytest.param("0", "1", "1", marks=fast, id="handles-splice"),
])
def test_bytes_through_pfs_are_the_files(tmp_path: Path, mnt: Path, no_open: str,
                                        splice: str, fast_path: str) -> None:
    data = tmp_path / "data"
    d1, d2 = _content(1), _content(2)
    write_tree(data / "in", {"d1/f": d1, "d2/f": d2})
    script = write_script(tmp_path / "io.py", USER_CODE.replace("{size}", str(SIZE)))
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "io", {"pfs": {"repo": "in", "glob": "/*"}}, ["python3", str(script)]))
    proc = start_pfsmount(spec, data, mnt,
                          env={"PFSMOUNT_NO_OPEN": no_open, "PFSMOUNT_SPLICE": splice,
                               "PFSMOUNT_FAST": fast_path})
    tracer = None
    try:
        ready = wait_for_staged(proc, data, mnt, "io", "ready")
        tracer = _trace(proc.pid, tmp_path / "strace.log")
        _evict(data / "in" / "d1" / "f")  # its first reads are spliced from the disk
        Path(ready).with_name("go").touch()
        result = finish(proc, mnt)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            finish(proc, mnt)
        if tracer is not None:
            try:
                tracer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(tracer.pid, signal.SIGKILL)
                tracer.wait()
    assert result.returncode == 0, result
    out = data / "io"
    pieces = json.loads((out / "pieces.json").read_text())
    for key, hexed in pieces.items():
        off, n = map(int, key.split(":"))
        assert bytes.fromhex(hexed) == d1[off:off + n], key  # short at the end, empty past it
    written = bytearray(d1)
    written[12345:12348] = b"XYZ"
    written += bytes(100) + b"tail"
    assert (out / "big").read_bytes() == written
    assert (out / "back").read_bytes() == written  # read back through /pfs/out
    assert (out / "appended").read_bytes() == d1 + d1
    assert (out / "old").read_bytes() == d1  # the swap did not change an open file
    assert (out / "new").read_bytes() == d2
    assert not (out / "go").exists() and not (out / "ready").exists()
    calls = _big_syscalls(tmp_path / "strace.log")
    if fast_path == "1" and no_open == "1":
        # The receive thread reads into its buffer (pread, then one write to /dev/fuse) and
        # moves WRITE payloads from its pipe to the file (splice), or writes them (pwrite).
        assert calls["pread64"] >= 4, calls
        if splice == "1":
            assert calls["splice"] >= 3 and calls["pwrite64"] == 0, calls
        else:
            assert calls["splice"] == 0 and calls["pwrite64"] >= 3, calls
    elif fast_path == "1":
        # Handles (fh != 0) are the trio loop's: it splices READs; WRITEs reach it as the
        # copy the receive thread queued, written from memory.
        assert calls["splice"] >= 4 and calls["pread64"] == 0 and calls["pwrite64"] >= 3, calls
    elif splice == "1":
        # Input reads and output writes both moved by splice, none through a Python buffer.
        assert calls["splice"] >= 8 and calls["pread64"] == 0 and calls["pwrite64"] == 0, calls
    else:
        assert calls["splice"] == 0 and calls["pread64"] >= 4 and calls["pwrite64"] >= 3, calls


def test_splice_follows_the_build_and_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PFSMOUNT_SPLICE", raising=False)
    monkeypatch.setattr(pyfuse3, "PFSMOUNT_PATCH", 3, raising=False)
    assert splice_possible()
    monkeypatch.setenv("PFSMOUNT_SPLICE", "0")
    assert not splice_possible()
    monkeypatch.delenv("PFSMOUNT_SPLICE")
    monkeypatch.setattr(pyfuse3, "PFSMOUNT_PATCH", 2)
    assert not splice_possible()  # a build without ReadFd/write_fd


@pytest.mark.parametrize(("pipe_max", "privileged", "expected"), [
    (1 << 20, False, 512 * 1024),  # the default: a 1 MiB reply plus header never fits
    (4 << 20, False, 1 << 20),
    (1 << 20, True, 0),  # the pipe grows past 1 MiB: libfuse's own size splices
    (64 * 1024, False, 0),  # 32 KiB requests would cost more than splice saves
])
def test_request_size_fits_the_splice_pipe(monkeypatch: pytest.MonkeyPatch, pipe_max: int,
                                           privileged: bool, expected: int) -> None:
    monkeypatch.setattr(fs, "_pipe_max_size", lambda: pipe_max)
    monkeypatch.setattr(fs, "_has_cap_sys_resource", lambda: privileged)
    assert splice_max_write() == expected
