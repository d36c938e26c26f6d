"""FUSE handlers awaited directly (no kernel): view lifetimes and the root across swaps."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyfuse3
import pytest

from pfsmount.datums import expand, open_repos
from pfsmount.fs import ROOT, PfsOperations
from pfsmount.outdir import OutTree
from pfsmount.spec import PfsInput
from pfsmount.view import build_view, empty_view

CTX = pyfuse3.RequestContext()


@pytest.fixture
def views(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / "data" / "in" / name).mkdir(parents=True)
        (tmp_path / "data" / "in" / name / "f.txt").write_text(name * 3)
    spec_input = PfsInput(name="in", repo="in", glob="/*")
    repos = open_repos(spec_input, str(tmp_path / "data"))
    fs = PfsOperations()
    built = [build_view(d, repos, b"K=V\n", fs.inodes) for d in expand(spec_input, repos)]
    outs = []
    for i in range(len(built)):
        staging = tmp_path / f"staging{i}"
        staging.mkdir()
        outs.append(OutTree(str(staging), fs.inodes))
    return fs, built, outs


async def test_an_old_view_lives_until_the_kernel_forgets_it(views) -> None:
    fs, (first, second), (out1, out2) = views
    fs.show(first, out1)
    entry = await fs.lookup(ROOT, b"in", CTX)
    assert entry.entry_timeout == 0  # root names always go back to pfsmount
    child = await fs.lookup(entry.st_ino, b"a", CTX)
    fh = (await fs.open((await fs.lookup(child.st_ino, b"f.txt", CTX)).st_ino, 0, CTX)).fh
    fs.show(second, out2)
    # The root now shows the second datum, but the old inodes and handle still work.
    assert (await fs.lookup(ROOT, b"in", CTX)).st_ino != entry.st_ino
    assert await fs.read(fh, 0, 100) == b"aaa"
    assert fs.live_views == 2  # the old view is kept alive by the kernel's references
    await fs.release(fh)
    await fs.forget([(entry.st_ino, 1), (child.st_ino, 1), (child.st_ino + 1, 1)])
    assert fs.live_views == 1  # freed once the kernel let go of it


async def test_a_swap_drops_the_roots_attributes_and_no_name(views) -> None:
    fs, (first, second), (out1, out2) = views

    class Recorder:
        """The notifier's whole interface: a name drop would be an AttributeError."""

        def __init__(self) -> None:
            self.dropped: list[int] = []

        def drop_attributes(self, inode: int) -> None:
            self.dropped.append(inode)

    fs.notifier = recorder = Recorder()  # type: ignore[assignment]
    fs.show(first, out1)
    await fs.lookup(ROOT, b"in", CTX)
    fs.show(second, out2)
    assert recorder.dropped == [ROOT, ROOT]


async def test_root_listing_is_one_datum_and_empty_between_jobs(views) -> None:
    fs, (first, _), (out1, _) = views
    fs.show(first, out1)
    fh = await fs.opendir(ROOT, CTX)
    names = [name for name, _ in fs._handles[fh].listing or []]
    assert names == [b".env", b"in", b"out"]
    await fs.releasedir(fh)
    fs.show(empty_view(fs.inodes), None)
    with pytest.raises(pyfuse3.FUSEError) as err:
        await fs.lookup(ROOT, b"in", CTX)
    assert err.value.errno == errno.ENOENT


async def test_inputs_are_read_only_and_out_is_writable(views) -> None:
    fs, (first, _), (out1, _) = views
    fs.show(first, out1)
    in_dir = await fs.lookup(ROOT, b"in", CTX)
    with pytest.raises(pyfuse3.FUSEError) as err:
        await fs.mkdir(in_dir.st_ino, b"x", 0o755, CTX)
    assert err.value.errno == errno.EROFS
    out = await fs.lookup(ROOT, b"out", CTX)
    fi, attr = await fs.create(out.st_ino, b"result", 0o644, os.O_WRONLY | os.O_CREAT, CTX)
    assert await fs.write(fi.fh, 0, b"done") == 4
    await fs.release(fi.fh)
    assert (Path(out1.staging) / "result").read_bytes() == b"done"
    out1.closed = True  # the datum ended: its output can no longer change
    with pytest.raises(pyfuse3.FUSEError) as err:
        await fs.open(attr.st_ino, os.O_WRONLY, CTX)
    assert err.value.errno == errno.ESTALE


async def test_a_small_file_is_primed_into_the_page_cache_at_its_first_open(
        views, monkeypatch: pytest.MonkeyPatch) -> None:
    fs, (first, _), (out1, _) = views
    stored: list[tuple[int, int, bytes]] = []
    monkeypatch.setattr(pyfuse3, "notify_store",
                        lambda inode, off, data: stored.append((inode, off, bytes(data))))
    fs.show(first, out1)
    fs.notifier = object()  # type: ignore[assignment]  # mounted, as far as priming is concerned
    in_dir = await fs.lookup(ROOT, b"in", CTX)
    a = await fs.lookup(in_dir.st_ino, b"a", CTX)
    f = await fs.lookup(a.st_ino, b"f.txt", CTX)
    for _ in range(2):
        fi = await fs.open(f.st_ino, os.O_RDONLY, CTX)
        assert fi.keep_cache  # the stored pages must survive the open
        await fs.release(fi.fh)
    # Once, before the first open returned: later opens find the pages already there.
    assert stored == [(f.st_ino, 0, b"aaa")]
