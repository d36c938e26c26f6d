"""Symlinks user code left in /pfs/out that point into an input become the input's content.

Pachyderm does this when it uploads a datum's output (`handleSymlinks` in its worker): real
pipelines "copy" an input with `ln -s /pfs/images/a.png /pfs/out/a.png` (the shuffle
example), and the output repo must then hold the file, not a link that dangles outside the
job. A link to an input directory brings the directory's files. Any other link (to another
output file, to /etc/passwd, dangling) stays the symlink it is.

It happens at the end of a successful attempt, before its files are staged (in a worker
thread): the staging directory no longer changes (its `OutTree` is closed) and the datum's
view, what the user code saw under /pfs, is still at hand. A link's target is resolved as
the kernel would have resolved it in the user code's /pfs, step by step, but against
pfsmount's own structures and never by following a path on the host: `/pfs/out/...` against
the staging directory (lstat, readlink), `/pfs/<input>/...` against the view's nodes (a
symlink of the input has the target recorded when it was listed, resolved the same way).
The bytes come from the listed entry, opened as /pfs opens it (`RepoIndex.open_file`:
beneath the repo root, never through a symlink, and only while it is still the file that
was listed), so an input shown with `empty_files` still gives its full content.

The copy is a reflink (FICLONE) where the file system can share the blocks, else a kernel
copy. Never a hard link: it would share the inode with the input repo, so rewriting the
input in place, or a chmod of either, would silently change the committed output.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pfsmount.datums import DatumInput
from pfsmount.store.base import Entry, Reader, RepoListing, RepoSource
from pfsmount.store.local import LocalRepo, RepoIndex
from pfsmount.view import Node, View

log = logging.getLogger(__name__)

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
MAX_HOPS = 40  # the kernel's limit on symlinks followed in one resolution (ELOOP)
_REMOTE_COPY_CHUNK = 8 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _InputFiles:
    """One input's listed entries and the store that reads them.

    A streamed datum carries its own entries (`DatumInput.subtree`); a hand-made one is
    looked up in its repo's whole listing.
    """

    def __init__(self, store: RepoSource, item: DatumInput) -> None:
        self.store = store
        self.local = isinstance(store, RepoIndex | LocalRepo)
        self._entries = ({e.path: e for e in (*item.parents, *item.subtree)}
                         if item.subtree else None)

    def get(self, path: str) -> Entry | None:
        if self._entries is not None:
            return self._entries.get(path)
        assert isinstance(self.store, RepoListing)
        return self.store.get(path)

    def source(self, path: str) -> str:
        return self.store.source(path)

    def open_file(self, entry: Entry) -> int:
        assert isinstance(self.store, RepoIndex | LocalRepo)
        return self.store.open_file(entry)

    def open_reader(self, entry: Entry) -> Reader:
        return self.store.open_reader(entry)


@dataclass(frozen=True)
class _Target:
    """An input file or directory a link resolved to."""

    repo: _InputFiles
    path: str  # in the repo, "/a/b"
    node: Node


@dataclass
class DatumFiles:
    """What one datum showed under /pfs: everything a link in its output may point at."""

    view: View
    repos: Mapping[str, RepoSource]
    mountpoint: str  # the /pfs the user code saw

    def resolve(self, staging: str, link: list[bytes], target: bytes) -> _Target | None:
        """Where the link at `staging/<link>` (target `target`) ends, if in an input."""
        pfs = _split(os.fsencode(os.path.abspath(self.mountpoint)))
        n = len(pfs)
        stack: list[bytes] = [] if target.startswith(b"/") else [*pfs, b"out", *link[:-1]]
        pending = deque(_split(target))
        hops = 0
        while pending:
            part = pending.popleft()
            if part == b"..":
                if stack:
                    stack.pop()
                continue
            stack.append(part)
            if len(stack) <= n:
                if stack != pfs[:len(stack)]:
                    return None  # outside /pfs
                continue
            top, rest = stack[n], stack[n + 1:]
            if top == b"out":
                kind, further = _in_staging(staging, rest)
            else:
                kind, further = _kind(self._node(top, rest))
            if kind is None or (kind == "file" and pending):
                return None  # missing, or a file used as a directory
            if further is not None:
                hops += 1
                if hops > MAX_HOPS:
                    return None
                stack.pop()
                if further.startswith(b"/"):
                    stack = []
                pending.extendleft(reversed(_split(further)))
        if len(stack) <= n or stack[n] == b"out":
            return None
        node = self._node(stack[n], stack[n + 1:])
        repo = self._repo(stack[n])
        if node is None or repo is None or _kind(node)[1] is not None:
            return None  # /pfs/.env is no input
        return _Target(repo, "/" + "/".join(os.fsdecode(p) for p in stack[n + 1:]), node)

    def _node(self, top: bytes, rest: list[bytes]) -> Node | None:
        inode = self.view.top.get(top)
        for name in rest:
            if inode is None:
                return None
            children = self.view.node(inode).children
            inode = children.get(name) if children is not None else None
        return self.view.node(inode) if inode is not None else None

    def _repo(self, top: bytes) -> _InputFiles | None:
        datum = self.view.datum
        for inp in datum.inputs if datum is not None else ():
            if os.fsencode(inp.name) == top:
                return _InputFiles(self.repos[inp.repo_key], inp)
        return None


def materialize(staging: str, files: DatumFiles) -> int:
    """Replace each symlink below `staging` that resolves into an input by what it points
    at (a file's bytes, a directory's tree); returns how many links were replaced."""
    replaced = 0
    root = os.fsencode(staging)
    for link in list(_symlinks(root)):
        parent = os.path.join(root, *link[:-1]) if len(link) > 1 else root
        dir_fd = os.open(parent, _DIR_FLAGS)
        try:
            st = os.lstat(link[-1], dir_fd=dir_fd)
            found = files.resolve(staging, link, os.readlink(link[-1], dir_fd=dir_fd))
            if found is None:
                continue
            owner = (st.st_uid, st.st_gid)
            src = None
            if found.node.children is None and not stat.S_ISLNK(found.node.mode):
                src = _open_source(found.repo, found.path, owner)
                if src is None:
                    continue  # the link's owner may not read it: it stays a link
            os.unlink(link[-1], dir_fd=dir_fd)
            if src is not None:
                _copy_file(src, stat.S_IMODE(found.node.mode), dir_fd, link[-1], owner)
            else:
                _place(found.repo, found.path, found.node, files.view, dir_fd, link[-1], owner)
            replaced += 1
        finally:
            os.close(dir_fd)
    if replaced:
        log.debug("replaced %d symlink(s) into inputs in %s by their content", replaced, staging)
    return replaced


def _place(repo: _InputFiles, path: str, node: Node, view: View, dir_fd: int, name: bytes,
           owner: tuple[int, int]) -> None:
    """Create `name` in `dir_fd` as a copy of the input entry `path` (recursively)."""
    if node.children is not None:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            for child, inode in sorted(node.children.items()):
                _place(repo, f"{path.rstrip('/')}/{os.fsdecode(child)}", view.node(inode),
                       view, fd, child, owner)
            os.fchmod(fd, stat.S_IMODE(node.mode))
            _chown(fd, owner)
        finally:
            os.close(fd)
    elif stat.S_ISLNK(node.mode):
        # A link inside a linked directory is copied as the link it is.
        os.symlink(_link_target(repo, path), name, dir_fd=dir_fd)
        if owner != (os.geteuid(), os.getegid()):
            os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
    elif not repo.local:
        _copy_remote(repo, path, stat.S_IMODE(node.mode), dir_fd, name, owner)
    else:
        src = _open_source(repo, path, owner)
        if src is not None:
            _copy_file(src, stat.S_IMODE(node.mode), dir_fd, name, owner)


def _open_source(repo: _InputFiles, path: str, owner: tuple[int, int]) -> int | None:
    """An fd on the input file `source`, or None if the link's owner could not read it.

    The copy is made by root and then given to the link's owner: without this check, user
    code running as another uid could link a file it may not read and get a copy it owns.
    Supplementary groups are not known here, so only owner/group/other bits are weighed.
    """
    entry = repo.get(path)
    source = repo.source(path)
    if entry is None or not entry.is_file:
        raise OSError(errno.EINVAL, f"{source} is not a listed regular file")
    # Opened as /pfs reads it: beneath the repo root, never through a symlink, and only
    # if it is still the file that was listed.
    src = repo.open_file(entry)
    st = os.fstat(src)
    uid, gid = owner
    if uid == 0:
        return src
    bit = (stat.S_IRUSR if st.st_uid == uid else stat.S_IRGRP if st.st_gid == gid
           else stat.S_IROTH)
    if st.st_mode & bit:
        return src
    os.close(src)
    log.warning("%s is not readable by uid %d: a link to it in /pfs/out is not copied",
                source, uid)
    return None


def _copy_file(src: int, mode: int, dir_fd: int, name: bytes, owner: tuple[int, int]) -> None:
    """Copy the open input file `src` to a new `name` in `dir_fd`; closes `src`."""
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dir_fd)
        try:
            _clone(src, dst, os.fstat(src).st_size)
            os.fchmod(dst, mode)
            _chown(dst, owner)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_remote(repo: _InputFiles, path: str, mode: int, dir_fd: int, name: bytes,
                 owner: tuple[int, int]) -> None:
    """Copy a listed file of a remote store (an S3 object) through its reader.

    Every object of a bucket is readable by whoever the mount shows it to (mode 0644), so
    no owner check is needed here.
    """
    entry = repo.get(path)
    if entry is None or not entry.is_file:
        raise OSError(errno.EINVAL, f"{repo.source(path)} is not a listed regular file")
    reader = repo.open_reader(entry)
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dir_fd)
        try:
            offset = 0
            while offset < entry.size:
                chunk = reader.read(offset, min(_REMOTE_COPY_CHUNK, entry.size - offset))
                if not chunk:
                    break
                os.write(dst, chunk)
                offset += len(chunk)
            os.fchmod(dst, mode)
            _chown(dst, owner)
        finally:
            os.close(dst)
    finally:
        reader.close()


def _clone(src: int, dst: int, size: int) -> None:
    """Share the blocks (reflink) if the file system can, else copy in the kernel."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return
    except OSError:
        pass  # another file system, or one without reflinks (ext4, tmpfs)
    offset = 0
    while True:
        try:
            n = os.copy_file_range(src, dst, 1 << 30, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = os.sendfile(dst, src, offset, 1 << 30)
        if n == 0:
            break
        offset += n
    if offset < size:
        log.debug("input shrank while being copied (%d < %d bytes)", offset, size)


def _chown(fd: int, owner: tuple[int, int]) -> None:
    # The copy belongs to whoever made the link, as the files the user code wrote do.
    if owner != (os.geteuid(), os.getegid()):
        os.fchown(fd, *owner)


def _in_staging(staging: str, rest: list[bytes]) -> tuple[str | None, bytes | None]:
    """(kind, link target) of /pfs/out/<rest>: every component before was a directory."""
    path = os.path.join(os.fsencode(staging), *rest)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    if stat.S_ISLNK(st.st_mode):
        return "link", os.readlink(path)
    return ("dir" if stat.S_ISDIR(st.st_mode) else "file"), None


def _kind(node: Node | None) -> tuple[str | None, bytes | None]:
    if node is None:
        return None, None
    if node.children is not None:
        return "dir", None
    if stat.S_ISLNK(node.mode):
        # The target as listed: the same one /pfs showed the user code.
        return ("link", node.data) if node.data is not None else (None, None)
    return "file", None


def _link_target(repo: _InputFiles, path: str) -> bytes:
    entry = repo.get(path)
    if entry is None or not entry.is_symlink:
        raise OSError(errno.EINVAL, f"{repo.source(path)} is not a listed symlink")
    return os.fsencode(entry.link)


def _symlinks(root: bytes) -> Iterator[list[bytes]]:
    """Relative paths (as components) of the symlinks below `root`; none is followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        prefix = [] if rel == b"." else rel.split(b"/")
        for name in sorted(dirnames + filenames):
            if os.path.islink(os.path.join(dirpath, name)):
                yield [*prefix, name]


def _split(path: bytes) -> list[bytes]:
    return [p for p in path.split(b"/") if p and p != b"."]
