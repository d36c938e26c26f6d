"""The receive thread of pfsmount's patched pyfuse3 (≥ 6): requests answered without Python.

pyfuse3 receives every FUSE request on the trio thread; the wakeup, the scheduler pass and the
Python handler cost ~25 µs a request, against ~6 µs for the kernel's part. Most requests of a
datum walk have answers known in advance, so the patch's C thread reads /dev/fuse itself and
answers those at the kernel's pace: the IOCTL Python's `open()` sends (isatty), GETATTR of an
inode registered with `attr` (a view's: views never change), READ and WRITE without a handle
(no_open) of an inode whose fds are registered with `fds`, GETATTR of an /pfs/out directory
and LOOKUP of a name missing from it (registered with `attr` and `directory`, refreshed by every
handler that changes the directory, dropped when it goes or its datum ends), LOOKUP of a name
that is not one of a /pfs root's (`names`, set at every swap), and the first READ
of a view's file
in a local repo: the thread opens it itself, exactly as `LocalRepo.open_file` would (beneath
the repo directory, through no symlink, only if it is the listed file; anything else goes to
Python, which says what is wrong). READs of an S3 object whose chunks are in `--cache-dir`
are answered the same way, from the chunk files (patch 5; a chunk not there yet goes to
Python, which fetches it). Everything else is queued, unchanged, for the trio loop, which
handles it exactly as before.

Invariants the callers keep: only attributes nothing changes behind pfsmount's back are
registered (a view's; an output directory's, re-registered by the handler that changes it,
before it answers); an fd is withdrawn
(`fds(inode, -1, -1)`, which waits for a read or write using it) before it is closed, and a
staging fd the moment its datum ends (`PfsOperations.seal`), so nothing is written to an
output after its commit began. `PFSMOUNT_FAST=0` keeps every request on the trio thread.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable

import pyfuse3

from pfsmount.store.base import Entry, RepoSource

log = logging.getLogger(__name__)

FAST_ENV = "PFSMOUNT_FAST"  # "0": receive every request on the trio thread


def fast_path_possible() -> bool:
    """Whether this pyfuse3 has the receive thread as pfsmount drives it (patch ≥ 6: chunked
    sources, a root's names) and it is not turned off."""
    return getattr(pyfuse3, "PFSMOUNT_PATCH", 0) >= 6 and os.environ.get(FAST_ENV) != "0"


class FastPath:
    """What the receive thread may answer by itself, kept true by the file system."""

    def __init__(self) -> None:
        # Per repo (by identity; the repo is kept alive here): its root's index in the
        # thread, or -1 where its files are not local.
        self._roots: dict[int, tuple[RepoSource, int]] = {}
        # The thread's counts are the process's: this mount's are what it adds.
        self._base = dict(pyfuse3.pfsmount_fast_stats())

    def attr(self, inode: int, attr: pyfuse3.EntryAttributes,
             origin: tuple[RepoSource, Entry] | None = None) -> None:
        """GETATTR of `inode` is answered with `attr` until `drop`: `inode` never changes.
        With the `origin` of a regular file, its READs may be answered from its bytes on this
        machine (`RepoSource.local_bytes`: a local repo's file, cached S3 chunks)."""
        where = None
        if origin is not None and stat.S_ISREG(origin[1].mode):
            root = self._root(origin[0])
            if root >= 0:
                where = origin[0].local_bytes(origin[1])
        if where is None:
            pyfuse3.pfsmount_fast_attr(inode, attr)
            return
        pyfuse3.pfsmount_fast_attr(inode, attr, root, os.fsencode(where.path), where.dev,
                                   where.ino, where.chunk)

    def _root(self, repo: RepoSource) -> int:
        known = self._roots.get(id(repo))
        if known is not None:
            return known[1]
        root = -1
        try:
            fd = repo.local_root()
            if fd >= 0:
                root = pyfuse3.pfsmount_fast_root(fd)
        except OSError as exc:
            # Its files are read by Python, which reports what is wrong with them.
            log.debug("repo %s: files not read by the receive thread: %s", repo.name, exc)
        self._roots[id(repo)] = (repo, root)
        return root

    def take_opened(self, lo: int, hi: int) -> list[int]:
        """Inodes lo..hi-1 whose file the thread opened since the last call."""
        return list(pyfuse3.pfsmount_fast_take_opened(lo, hi))

    def fds(self, inode: int, rfd: int, wfd: int) -> None:
        """READ (rfd) and WRITE (wfd) of `inode` without a handle use these fds; -1: ask us.
        Returns once nothing uses the fds replaced."""
        pyfuse3.pfsmount_fast_fds(inode, rfd, wfd)

    def directory(self, inode: int, fd: int) -> None:
        """LOOKUPs below `inode` of names missing from directory `fd` (copied) are answered
        ENOENT by the thread until `drop` (an /pfs/out directory: what its lookup answers)."""
        pyfuse3.pfsmount_fast_dir(inode, fd)

    def names(self, inode: int, names: Iterable[bytes]) -> None:
        """Directory `inode` holds exactly `names` from now on: the thread answers a LOOKUP of
        any other name ENOENT (a root of /pfs, set at each swap)."""
        pyfuse3.pfsmount_fast_names(inode, names)

    def withdraw(self, inode: int) -> None:
        """Before `inode`'s fds are closed."""
        pyfuse3.pfsmount_fast_fds(inode, -1, -1)

    def drop(self, lo: int, hi: int) -> None:
        """Forget inodes lo..hi-1 (a view the kernel no longer holds)."""
        pyfuse3.pfsmount_fast_drop(lo, hi)

    def stats(self) -> dict[str, int]:
        """Requests answered in C by kind, bytes read and written there, requests handed on
        (this mount's)."""
        now = pyfuse3.pfsmount_fast_stats()
        return {k: v - self._base.get(k, 0) for k, v in now.items()}
