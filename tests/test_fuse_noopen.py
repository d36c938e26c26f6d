"""FUSE no_open (issue 14): OPEN answered ENOSYS, READ/WRITE/FSYNC served by inode.

Kernel-free tests await the handlers directly; the mount tests run the same user code on both
transports (`PFSMOUNT_NO_OPEN` 0 and 1), so the handle path and the inode path must agree.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyfuse3
import pytest

from pfsmount.datums import expand, open_repos
from pfsmount.fs import NO_HANDLE, ROOT, PfsOperations, no_open_possible
from pfsmount.inodeio import OpenByInode
from pfsmount.outdir import OutTree
from pfsmount.spec import PfsInput
from pfsmount.view import build_view
from support import (
    batching_spec,
    finish,
    needs_fuse,
    run_pfsmount,
    start_pfsmount,
    wait_for_staged,
    write_script,
    write_spec,
    write_tree,
)

CTX = pyfuse3.RequestContext()
patched = pytest.mark.skipif(not getattr(pyfuse3, "PFSMOUNT_PATCH", 0),
                             reason="needs pfsmount's patched pyfuse3 (scripts/setup)")


@pytest.fixture
def no_open_fs(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / "data" / "in" / name).mkdir(parents=True)
        (tmp_path / "data" / "in" / name / "f.txt").write_text(name * 3)
    spec_input = PfsInput(name="in", repo="in", glob="/*")
    repos = open_repos(spec_input, str(tmp_path / "data"))
    fs = PfsOperations(no_open=True)
    views = [build_view(d, repos, b"K=V\n", fs.inodes) for d in expand(spec_input, repos)]
    outs = []
    for i in range(len(views)):
        (tmp_path / f"staging{i}").mkdir()
        outs.append(OutTree(str(tmp_path / f"staging{i}"), fs.inodes))
    return fs, views, outs


async def _file(fs: PfsOperations, *names: bytes) -> int:
    inode = ROOT
    for name in names:
        inode = (await fs.lookup(inode, name, CTX)).st_ino
    return inode


async def test_open_is_declined_and_reads_go_by_inode(no_open_fs) -> None:
    fs, (first, second), (out1, out2) = no_open_fs
    fs.show(first, out1)
    f = await _file(fs, b"in", b"a", b"f.txt")
    with pytest.raises(pyfuse3.FUSEError) as err:
        await fs.open(f, os.O_RDONLY, CTX)
    assert err.value.errno == errno.ENOSYS  # the kernel's cue to stop sending OPEN
    assert not fs.enable_atomic_o_trunc  # O_TRUNC must reach us as SETATTR
    assert await fs.read(NO_HANDLE, 0, 100, f) == b"aaa"
    assert await fs.read(NO_HANDLE, 1, 1, f) == b"a"
    assert fs.stats.content_opens == 1  # one reader kept open across reads
    fs.show(second, out2)
    # The old view's inode still reads its own datum after the swap, until forgotten.
    assert await fs.read(NO_HANDLE, 0, 100, f) == b"aaa"
    await fs.forget([(f, 1)])
    assert len(fs._readers) == 0


async def test_writes_by_inode_reach_staging_and_never_an_input(no_open_fs) -> None:
    fs, (first, _), (out1, _) = no_open_fs
    fs.show(first, out1)
    out = await _file(fs, b"out")
    fi, attr = await fs.create(out, b"r", 0o644, os.O_WRONLY | os.O_CREAT, CTX)
    await fs.release(fi.fh)  # CREATE keeps its handle even under no_open
    assert await fs.write(NO_HANDLE, 0, b"later", attr.st_ino) == 5
    await fs.fsync(NO_HANDLE, False, attr.st_ino)
    assert await fs.read(NO_HANDLE, 0, 100, attr.st_ino) == b"later"
    assert (Path(out1.staging) / "r").read_bytes() == b"later"
    f = await _file(fs, b"in", b"a", b"f.txt")
    with pytest.raises(pyfuse3.FUSEError) as err:
        await fs.write(NO_HANDLE, 0, b"x", f)
    assert err.value.errno == errno.EROFS
    out1.closed = True  # the datum ended: its output can no longer change
    with pytest.raises(pyfuse3.FUSEError) as err:
        await fs.write(NO_HANDLE, 0, b"x", attr.st_ino)
    assert err.value.errno == errno.ESTALE


def test_open_by_inode_is_bounded_and_waits_for_reads_in_flight() -> None:
    closed: list[str] = []
    cache: OpenByInode[str] = OpenByInode(closed.append, capacity=2)
    owner = object()
    for inode in (1, 2, 3):
        cache.put(inode, f"r{inode}", owner)
    assert closed == ["r1"] and len(cache) == 2  # the least recently used went
    with cache.using(2) as value:
        cache.drop(2)  # FORGET while a worker thread still reads it
        assert value == "r2" and closed == ["r1"]
    assert closed == ["r1", "r2"]  # closed once the read was back
    cache.drop_owned_by(owner)
    assert closed == ["r1", "r2", "r3"] and len(cache) == 0


USER_CODE = """
    import errno, mmap, os
    from pfsmount import batch_datums

    @batch_datums
    def main():
        f = os.environ["in"] + "/f"
        out = os.path.dirname(os.environ["in"]) + "/out"
        seen = []
        for _ in range(2):
            with open(f, "rb") as fh:
                seen.append(fh.read())
        with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as m:
            seen.append(bytes(m))
        assert seen == [b"input bytes"] * 3, seen
        with open(out + "/trunc", "w") as o:
            o.write("a long first version")
        with open(out + "/trunc", "w") as o:  # O_TRUNC on a file that exists
            o.write("short")
        with open(out + "/append", "w") as o:
            o.write("x")
        with open(out + "/append", "a") as o:
            o.write("y")
        with open(out + "/middle", "wb") as o:
            o.write(b"0123456789")
        with open(out + "/middle", "r+b") as o:
            o.seek(2)
            o.write(b"AB")
            o.flush()
            os.fsync(o.fileno())
            o.seek(0)
            assert o.read() == b"01AB456789"
        os.truncate(out + "/middle", 4)
        with open(out + "/trunc", "rb") as o:
            assert o.read() == b"short"
        for gone in ("unlinked", "renamed over"):  # still open after its last name went
            with open(out + "/gone", "wb") as o:
                o.write(b"old")
            with open(out + "/gone", "r+b") as o:
                if gone == "unlinked":
                    os.unlink(out + "/gone")
                else:
                    open(out + "/other", "w").close()
                    os.rename(out + "/other", out + "/gone")
                o.write(b"NEW")
                o.flush()
                o.seek(0)
                assert o.read() == b"NEW", gone
        codes = []
        for mode in ("w", "r+"):  # an input refuses writes, at open or at write
            try:
                with open(f, mode) as w:
                    w.write("overwritten")
                codes.append("ok")
            except OSError as e:
                codes.append(errno.errorcode[e.errno])
        with open(out + "/codes", "w") as o:
            o.write(" ".join(codes))

    main()
"""


@needs_fuse
@pytest.mark.parametrize("no_open", ["0", pytest.param("1", marks=patched)])
def test_both_transports_read_and_write_alike(tmp_path: Path, mnt: Path, no_open: str) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"f": "input bytes"})
    script = write_script(tmp_path / "io.py", USER_CODE)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "io", {"pfs": {"repo": "in", "glob": "/"}}, ["python3", str(script)]))
    result = run_pfsmount(spec, data, mnt, env={"PFSMOUNT_NO_OPEN": no_open})
    assert result.returncode == 0, result
    got = {p.name: p.read_bytes() for p in (data / "io").iterdir()}
    assert got["trunc"] == b"short"
    assert got["append"] == b"xy"
    assert got["middle"] == b"01AB"
    assert all(c in ("EROFS", "EACCES") for c in got["codes"].decode().split()), got["codes"]
    assert (data / "in" / "f").read_bytes() == b"input bytes"


def test_no_open_follows_the_build_and_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyfuse3, "PFSMOUNT_PATCH", 1, raising=False)
    monkeypatch.delenv("PFSMOUNT_NO_OPEN", raising=False)
    assert no_open_possible()
    monkeypatch.setenv("PFSMOUNT_NO_OPEN", "0")
    assert not no_open_possible()
    monkeypatch.delenv("PFSMOUNT_NO_OPEN")
    monkeypatch.setattr(pyfuse3, "PFSMOUNT_PATCH", 0)
    assert not no_open_possible()  # plain pyfuse3 cannot pass the inode to read


LEAK_CODE = """
    import os
    import time
    from pfsmount import iter_datums

    for d in iter_datums():
        name = os.path.basename(d.env["in"])
        with open(d.env["in"]) as f:  # the first OPEN is what turns no_open on
            f.read()
        out = os.path.join(os.path.dirname(os.path.dirname(d.env["in"])), "out")
        with open(os.path.join(out, name), "w") as f:
            f.write(name)
        if name == "f119":
            # The last datum: the test counts pfsmount's open files while this one waits.
            with open(os.path.join(out, "counted"), "w") as f:
                f.write("x")
            while os.path.exists(os.path.join(out, "counted")):
                time.sleep(0.05)
"""


@needs_fuse
@pytest.mark.parametrize("no_open", ["0", pytest.param("1", marks=patched)])
def test_output_files_hold_no_descriptor_after_their_datum(
    tmp_path: Path, mnt: Path, no_open: str
) -> None:
    """Regression: on a no_open connection the kernel sends no RELEASE for a CREATE'd file, so
    each output file's handle and fd stayed open for the whole job (120 datums: 120 fds), and
    every swap scanned all of them (1,000 datums took 29 s instead of 3)."""
    data = tmp_path / "data"
    write_tree(data / "in", {f"f{i:03d}": "x" for i in range(120)})
    script = write_script(tmp_path / "leak.py", LEAK_CODE)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "leak", {"pfs": {"repo": "in", "glob": "/*"}}, ["python3", str(script)]))
    proc = start_pfsmount(spec, data, mnt, env={"PFSMOUNT_NO_OPEN": no_open})
    counted = wait_for_staged(proc, data, mnt, "leak", "counted")
    try:
        staged = 0
        for fd in os.listdir(f"/proc/{proc.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            # Inputs are not counted: old views' readers are bounded by OpenByInode's capacity.
            output = target.startswith(str(data)) and not target.startswith(str(data / "in"))
            staged += output and os.path.basename(target).startswith("f")
        os.unlink(counted)  # lets the last datum end, whatever the count
        assert staged <= 2, f"{staged} output files of ended datums still open in pfsmount"
    finally:
        result = finish(proc, mnt)
    assert result.returncode == 0, result
    assert len(list((data / "leak").iterdir())) == 120, result
