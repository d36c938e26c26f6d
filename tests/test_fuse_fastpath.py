"""The patched pyfuse3's receive thread (issue 14): requests answered in C, on a real mount.

A child process mounts PfsOperations itself (pyfuse3 holds one session per process) with the
receive thread on, shows a datum with an output tree, and runs user-like I/O from another
thread: what the thread answered is read from `pfsmount_fast_stats()`, what reached Python from
handler counters. The answers must be the ones the Python handlers would give (same bytes, same
attributes, same errors), and a datum's end must cut its output files off at once.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyfuse3
import pytest

from pfsmount import fastpath
from support import PY, needs_fuse, write_tree

patched = pytest.mark.skipif(getattr(pyfuse3, "PFSMOUNT_PATCH", 0) < 6,
                             reason="needs pfsmount's patched pyfuse3 ≥ 6 (scripts/setup)")

PROBE = r"""
import collections, errno, json, os, stat, sys
import pyfuse3, trio
from pfsmount.datums import expand, open_repos
from pfsmount.fs import ROOT, PfsOperations
from pfsmount.outdir import OutTree
from pfsmount.spec import PfsInput
from pfsmount.view import build_view, empty_view
from fuseprobe import serve_while

data, mnt, staging = sys.argv[1], sys.argv[2], sys.argv[3]
calls = collections.Counter()


class Counting(PfsOperations):
    async def getattr(self, inode, ctx):
        calls["getattr"] += 1
        return await super().getattr(inode, ctx)

    async def lookup(self, parent, name, ctx):
        # Root names: no epochs here (not probed), asked at every walk.
        calls["lookup" if parent != ROOT else "root_lookup"] += 1
        return await super().lookup(parent, name, ctx)

    async def read(self, fh, off, size, inode=0):
        calls["read"] += 1
        return await super().read(fh, off, size, inode)

    def write_fd(self, fh, inode):
        calls["write"] += 1
        return super().write_fd(fh, inode)


spec_input = PfsInput(name="in", repo="in", glob="/*")
repos = open_repos(spec_input, data)
fs = Counting(no_open=True, splice=True, fast_path=True)
datums = list(expand(spec_input, repos))
result = {}


def uncached(fd):
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next read must ask the server
    return fd


def run(token):
    sync = lambda fn, *a: trio.from_thread.run_sync(fn, *a, trio_token=token)
    trees = []

    def show(i):
        where = os.path.join(staging, str(len(trees)))  # datum 0's is staging/0
        os.makedirs(where)
        tree = OutTree(where, fs.inodes)
        trees.append(tree)
        fs.show(build_view(datums[i], repos, b"K=V\n", fs.inodes), tree)

    sync(show, 0)
    f = os.path.join(mnt, "in", "a", "f.bin")
    src = os.path.join(data, "in", "a", "f.bin")
    result["running"] = pyfuse3.pfsmount_fast_running()
    before = dict(calls)
    # IOCTL: Python's open() asks isatty of every file. READ: the thread opens the file.
    with open(f, "rb") as r:
        first = r.read()
        result["isatty"] = r.isatty()
    getattrs = calls["getattr"]  # before: the root's (its attributes change at swaps)
    fd = os.open(f, os.O_RDONLY)
    again = os.pread(uncached(fd), 1 << 20, 0)
    tail = os.pread(uncached(fd), 100, len(first) - 10)
    past = os.pread(uncached(fd), 100, len(first) + 10)
    # GETATTR: the kernel drops a file's atime after a READ, so fstat asks again.
    st = os.fstat(fd)
    os.close(fd)
    result["read_python"] = calls["read"] - before.get("read", 0)
    result["getattr_python"] = calls["getattr"] - getattrs
    want = os.stat(src)
    result["bytes_ok"] = first == again[:len(first)] == open(src, "rb").read()
    result["tail_ok"] = tail == first[-10:] and past == b""
    # A name missing from a view directory: asked once, then a negative entry of the kernel's.
    before = calls["lookup"]
    result["absent"] = [os.path.exists(os.path.join(mnt, "in", "a", "nope")) for _ in range(5)]
    result["absent_lookups"] = calls["lookup"] - before
    result["stat_ok"] = (st.st_size, st.st_mode, st.st_mtime_ns) == (
        want.st_size, want.st_mode, want.st_mtime_ns)
    # WRITE: a file made by CREATE, written at offsets, read back from the server.
    before = dict(calls)
    out = os.path.join(mnt, "out", "o.bin")
    with open(out, "w+b", buffering=0) as o:
        o.write(b"a" * 300000)
        os.pwrite(o.fileno(), b"XYZ", 1000)
        os.pwrite(o.fileno(), b"end", 400000)  # past the end: a hole
        os.fsync(o.fileno())
        back = os.pread(uncached(o.fileno()), 500000, 0)
    expect = bytearray(b"a" * 300000)
    expect[1000:1003] = b"XYZ"
    expect += bytes(100000) + b"end"
    result["write_python"] = calls["write"] - before.get("write", 0)
    result["written_ok"] = open(os.path.join(staging, "0", "o.bin"), "rb").read() == expect
    result["back_ok"] = back == expect
    # /pfs/out's directories: missing names and attributes answered by the thread, and as
    # fresh as the staging directory after every change made through the handlers.
    top = os.path.join(mnt, "out")
    stage = os.path.join(staging, "0")
    os.mkdir(os.path.join(top, "sub"))
    before = dict(calls)
    dirs_ok = []
    for i in range(20):
        with open(os.path.join(top, "sub", f"f{i}"), "wb") as o:  # LOOKUP, CREATE, GETATTR
            o.write(b"x")
        dirs_ok.append(os.stat(os.path.join(top, "sub")).st_mtime_ns
                       == os.stat(os.path.join(stage, "sub")).st_mtime_ns)
    result["absent_python"] = calls["lookup"] - before.get("lookup", 0)
    result["dir_getattr_python"] = calls["getattr"] - before.get("getattr", 0)
    os.mkdir(os.path.join(top, "sub", "d"))
    dirs_ok.append(os.stat(os.path.join(top, "sub")).st_nlink
                   == os.stat(os.path.join(stage, "sub")).st_nlink)
    os.unlink(os.path.join(top, "sub", "f0"))
    dirs_ok.append(not os.path.exists(os.path.join(top, "sub", "f0")))
    dirs_ok.append(os.path.exists(os.path.join(top, "sub", "f1")))
    os.rename(os.path.join(top, "sub"), os.path.join(top, "moved"))
    dirs_ok.append(sorted(os.listdir(os.path.join(top, "moved"))) ==
                   sorted(["d"] + [f"f{i}" for i in range(1, 20)]))
    dirs_ok.append(not os.path.exists(os.path.join(top, "moved", "nothing")))
    os.rmdir(os.path.join(top, "moved", "d"))
    dirs_ok.append(not os.path.exists(os.path.join(top, "moved", "d")))
    st = os.stat(os.path.join(top, "moved"))
    want = os.stat(os.path.join(stage, "moved"))
    dirs_ok.append((st.st_mtime_ns, st.st_nlink, st.st_mode) ==
                   (want.st_mtime_ns, want.st_nlink, want.st_mode))
    result["dirs_ok"] = dirs_ok
    # The datum ends: a writer still holding the file must get ESTALE, not reach the file.
    held = os.open(out, os.O_WRONLY)
    sync(fs.seal, trees[0])
    try:
        os.pwrite(held, b"late", 0)
        result["late"] = "written"
    except OSError as exc:
        result["late"] = errno.errorcode[exc.errno]
    os.close(held)
    result["unchanged"] = open(os.path.join(staging, "0", "o.bin"), "rb").read() == expect
    # A swap: the next datum's files, answered the same way.
    sync(show, 1)
    with open(os.path.join(mnt, "in", "b", "f.bin"), "rb") as r:
        result["next_ok"] = r.read() == open(os.path.join(data, "in", "b", "f.bin"), "rb").read()
    # Files changed since the listing: the thread does not open them; Python refuses them.
    before = calls["read"]
    os.rename(os.path.join(data, "in", "b", "g.bin"), os.path.join(data, "in", "b", "h.bin"))
    with open(os.path.join(data, "in", "b", "g.bin"), "wb") as w:
        w.write(b"not the listed file")
    os.unlink(os.path.join(data, "in", "b", "s.bin"))
    os.symlink("/etc/passwd", os.path.join(data, "in", "b", "s.bin"))
    result["swapped"] = []
    for name in ("g.bin", "s.bin"):
        try:
            with open(os.path.join(mnt, "in", "b", name), "rb") as r:
                result["swapped"].append(r.read()[:20].decode(errors="replace"))
        except OSError as exc:
            result["swapped"].append(errno.errorcode[exc.errno])
    result["swapped_python"] = calls["read"] - before
    # A root name that is not the datum's: ENOENT from the thread; one that is goes to Python.
    # Between datums (the empty view) every name is absent; the next datum's are there again.
    roots = lambda: [os.path.exists(os.path.join(mnt, n)) for n in ("nope", "in", "out", ".env")]
    result["roots"] = roots()
    before = calls["root_lookup"]
    result["nope"] = [os.path.exists(os.path.join(mnt, "nope")) for _ in range(5)]
    result["nope_python"] = calls["root_lookup"] - before
    sync(lambda: fs.show(empty_view(fs.inodes), None))
    before = calls["root_lookup"]
    result["roots_between"] = roots()
    result["roots_between_python"] = calls["root_lookup"] - before
    sync(show, 1)
    result["roots_again"] = roots()
    result["input_files"] = fs.input_files
    result["stats"] = pyfuse3.pfsmount_fast_stats()
    result["input_bytes"] = fs.input_bytes
    result["python_bytes"] = fs.stats.bytes_read


serve_while(fs, mnt, "pfsmount-fast-test", run)
result["stopped"] = not pyfuse3.pfsmount_fast_running()
print(json.dumps(result))
"""


@needs_fuse
@patched
def test_the_receive_thread_answers_as_the_handlers_would(tmp_path: Path) -> None:
    data, mnt, staging = tmp_path / "data", tmp_path / "mnt", tmp_path / "staging"
    write_tree(data / "in", {"a/f.bin": os.urandom(200000), "b/f.bin": os.urandom(5000),
                             "b/g.bin": b"g" * 100, "b/s.bin": b"s" * 100})
    mnt.mkdir()
    staging.mkdir()
    try:
        proc = subprocess.run([PY, "-c", PROBE, str(data), str(mnt), str(staging)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    stats = got["stats"]
    assert got["running"] is True and got["stopped"] is True, got
    assert got["isatty"] is False and stats["ioctl"] >= 1, got
    # Same bytes, attributes and EOF as the handlers give; none of them reached Python, not
    # even the first READ (the thread opened the file).
    assert got["bytes_ok"] and got["tail_ok"] and got["stat_ok"], got
    assert got["absent"] == [False] * 5 and got["absent_lookups"] == 1, got
    assert got["read_python"] == 0 and stats["read"] >= 3 and stats["opens"] >= 1, got
    assert got["getattr_python"] == 0 and stats["getattr"] >= 1, got
    assert got["write_python"] == 0 and stats["write"] >= 3, got
    assert got["written_ok"] and got["back_ok"], got
    # /pfs/out directories: the new names' LOOKUPs and the directory's GETATTR after each
    # CREATE never reached Python, and what the thread said matched the staging directory.
    assert got["absent_python"] == 0 and stats["absent"] >= 20, got
    assert got["dir_getattr_python"] == 0, got
    assert all(got["dirs_ok"]), got
    # Sealed: the late write was refused by Python (the thread had let go of the fd).
    assert got["late"] == "ESTALE" and got["unchanged"], got
    assert got["next_ok"], got
    # A file replaced, or replaced by a symlink, after the listing: an I/O error, from Python.
    assert got["swapped"] == ["EIO", "EIO"] and got["swapped_python"] >= 2, got
    # The job's input counts include what the thread opened and read.
    assert got["roots"] == [False, True, True, True], got
    assert got["nope"] == [False] * 5 and got["nope_python"] == 0, got
    assert got["roots_between"] == [False] * 4 and got["roots_between_python"] == 0, got
    assert got["roots_again"] == [False, True, True, True], got
    assert got["input_files"] == 2, got  # a/f.bin and b/f.bin
    assert stats["bytes_read"] >= 200000, got
    assert got["input_bytes"] == got["python_bytes"] + stats["bytes_read"], got


def test_the_thread_follows_the_build_and_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fastpath.FAST_ENV, raising=False)
    monkeypatch.setattr(pyfuse3, "PFSMOUNT_PATCH", 6, raising=False)
    assert fastpath.fast_path_possible()
    monkeypatch.setenv(fastpath.FAST_ENV, "0")
    assert not fastpath.fast_path_possible()
    monkeypatch.delenv(fastpath.FAST_ENV)
    monkeypatch.setattr(pyfuse3, "PFSMOUNT_PATCH", 5)
    assert not fastpath.fast_path_possible()  # a build without a root's names
