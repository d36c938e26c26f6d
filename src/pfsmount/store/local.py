"""Repos as plain local directories: `DATA/<repo>/...` is the repo's content.

Repos of a project other than `default` live in `DATA/@<project>/<repo>`. No repo or project
name can start with "@" (or contain "/"), so the layout is never ambiguous: `DATA/@x` is never
a repo of the default project, and `DATA/<name>` never belongs to another project.

A `RepoIndex` is one listing of such a directory, taken once and never refreshed, so every datum
of a job sees the same repo state — the local stand-in for a Pachyderm input commit. Listing
reads metadata only (lstat, no symlink following); file content is read later, lazily, through
`open_file`, which never follows a symlink below the repo's root and checks that what it opened
is the very file the listing saw (device, inode, type): a file or directory swapped for a
symlink after the listing cannot make /pfs show bytes from elsewhere.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Iterator

from pfsmount import _linux
from pfsmount.store.base import (
    Entry,
    LocalBytes,
    RepoListing,
    RepoSource,
    StoreError,
    digest_entries,
)

__all__ = ["DEFAULT_PROJECT", "Entry", "LocalRepo", "RepoIndex", "StoreError", "open_repo",
           "open_stream", "repo_location"]

log = logging.getLogger(__name__)

_REPO_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
DEFAULT_PROJECT = "default"
_PROJECT_PREFIX = "@"


class _LocalFiles:
    """Opening listed files beneath a repo directory held open (shared by both local forms)."""

    name: str
    root: str
    _root_fd: int
    _root_entry: Entry | None

    def source(self, path: str) -> str:
        """The absolute filesystem path holding the bytes of the entry at `path`."""
        relative = path.lstrip("/")
        return os.path.join(self.root, relative) if relative else self.root

    def open_reader(self, entry: Entry) -> LocalReader:
        return LocalReader(self.open_file(entry))

    def root_fd(self) -> int:
        """The repo directory, held open: every input is opened beneath it (see open_file)."""
        return self._root_fd if self._root_fd >= 0 else self._open_root()

    def local_root(self) -> int:
        return self.root_fd()

    def local_bytes(self, entry: Entry) -> LocalBytes:
        return LocalBytes(entry.path.lstrip("/"), entry.dev, entry.ino)

    def open_file(self, entry: Entry) -> int:
        """Open the listed regular file `entry` read-only, never through a symlink.

        The path is resolved beneath the repo root without following any link; the file
        found must be the one listed (device, inode, type). Anything else (a file or a
        parent directory replaced since the listing) is EIO, with a warning naming the path.
        """
        root_fd = self.root_fd()
        relative = entry.path.lstrip("/")
        try:
            fd = _linux.open_beneath(root_fd, relative, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
                raise self._swapped(entry, "a symlink or a file is now in the way") from None
            raise
        st = os.fstat(fd)
        if (st.st_ino, st.st_dev) != (entry.ino, entry.dev) or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self._swapped(entry, "it is not the file that was listed")
        return fd

    def _swapped(self, entry: Entry, why: str) -> OSError:
        path = os.path.join(self.root, entry.path.lstrip("/"))
        log.warning("repo %s: refusing to read %s: %s (changed after the repo was listed; "
                    "it reads as an I/O error)", self.name, path, why)
        return OSError(errno.EIO, f"{path} changed after the repo was listed")

    def _open_root(self) -> int:
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        listed = self._root_entry
        if listed is not None and listed.ino and (st.st_ino, st.st_dev) != (listed.ino,
                                                                             listed.dev):
            os.close(fd)
            raise self._swapped(listed, "the repo directory was replaced")
        self._root_fd = fd
        return fd


class LocalRepo(_LocalFiles, RepoSource):
    """A repo directory as a stream: `walk` lists it in listing order as it goes.

    Opening it reads only the repo directory itself (the commit is known then); the walk
    holds one sorted directory listing per level of the current path, never the repo.
    """

    def __init__(self, name: str, root: str, root_fd: int, root_entry: Entry,
                 commit: str) -> None:
        self.name = name
        self.root = root
        self._root_fd = root_fd
        self._root_entry = root_entry
        self.commit = commit

    def __repr__(self) -> str:
        return f"LocalRepo({self.name!r}, {self.root!r})"

    def walk(self) -> Iterator[Entry]:
        yield self._root_entry
        yield from _walk_sorted(self.name, self.root)


class RepoIndex(_LocalFiles, RepoListing):
    """An immutable listing of one repo directory; files are read with `pread` on an fd."""

    def __init__(self, name: str, root: str, entries: list[Entry], root_fd: int = -1,
                 commit: str = "") -> None:
        RepoListing.__init__(self, name, root, entries, commit)
        # The repo directory as listed, held open: every input is opened beneath it.
        self._root_fd = root_fd
        self._root_entry = self.get("/")


class LocalReader:
    """A listed local file, open; a `pread` of it is short enough for the FUSE thread."""

    inline = True

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def repo_location(project: str, repo: str) -> str:
    """Where a repo (or a pipeline's output repo) lives, relative to the data directory.

    The default project keeps the original layout, `<repo>`; any other is `@<project>/<repo>`.
    """
    if project == DEFAULT_PROJECT:
        return repo
    return f"{_PROJECT_PREFIX}{project}/{repo}"


def check_repo_name(project: str, repo: str) -> None:
    """`StoreError` unless both names can be a place in the data layout (any store's)."""
    for what, name in (("project", project), ("repo", repo)):
        if not _REPO_NAME.fullmatch(name):
            raise StoreError(
                f"{what} name {name!r} is not valid: use only letters, digits, '_' and '-' "
                "(a repo is one directory directly under the data directory, or under "
                "DATA/@<project> for a project other than 'default')"
            )


def open_repo(data_dir: str, repo: str, project: str = DEFAULT_PROJECT) -> RepoIndex:
    """List the repo's directory once and return its index; raise `StoreError` if unusable."""
    stream = open_stream(data_dir, repo, project)
    index = RepoIndex(stream.name, stream.root, list(stream.walk()), stream._root_fd,
                      stream.commit)
    log.debug("listed repo %s: %d entries, commit %s", index.name, len(index.entries),
              index.commit)
    return index


def open_stream(data_dir: str, repo: str, project: str = DEFAULT_PROJECT) -> LocalRepo:
    """Open the repo's directory for a streamed listing; raise `StoreError` if unusable.

    Reads the repo directory's own entries (its commit) and walks only as far as the first
    file (an empty repo is refused now, not after a job has started).
    """
    check_repo_name(project, repo)
    label = repo if project == DEFAULT_PROJECT else f"{project}/{repo}"
    root = os.path.abspath(os.path.join(data_dir, repo_location(project, repo)))
    _check_repo_dir(label, root, data_dir, project, repo)
    try:
        # The repo directory itself may be a symlink to the real data; follow it at the top only.
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(root_fd)
    except OSError as exc:
        raise StoreError(f"repo {label!r}: cannot open {root}: {exc.strerror}") from None
    root_entry = Entry("/", st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid,
                       st.st_dev, st.st_ino)
    try:
        top = _sorted_dir(label, root, "")
        if not any(not e.is_dir for e in _walk_sorted(label, root, top)):
            raise StoreError(
                f"repo {label!r} is empty: {root} contains no files (Pachyderm runs no job on "
                f"an empty input commit; add the input files under {root})"
            )
    except BaseException:
        os.close(root_fd)
        raise
    return LocalRepo(label, root, root_fd, root_entry, _commit(root_entry, top))


def _commit(root: Entry, top: list[tuple[str, os.DirEntry[str] | None, Entry]]) -> str:
    """The repo's commit id: a fingerprint of its directory and top-level entries.

    Known before the walk, so the first datum's env needs no full listing. Any change at the
    top level (a name added, removed or rewritten; a top-level directory's own entries
    changed) gives a new id; a rewrite deeper down keeps it. What decides whether a datum runs
    again is its datum hash, over its own subtree, which sees every change.
    """
    return digest_entries([root, *(entry for _, _, entry in top)], digest_size=16)


def _check_repo_dir(label: str, root: str, data_dir: str, project: str, repo: str) -> None:
    # A directory that looks meant for this repo but is where the layout does not read it.
    default = project == DEFAULT_PROJECT
    other = os.path.abspath(os.path.join(
        data_dir, f"{_PROJECT_PREFIX}{DEFAULT_PROJECT}" if default else project, repo))
    misplaced = os.path.isdir(other)
    if misplaced and default and os.path.isdir(root):
        # DATA/@default/<repo> means nothing in the layout, yet someone put the repo there:
        # either directory could be the one meant, so refuse to guess. (DATA/P/<repo> beside
        # DATA/@P/<repo> is fine: it is a directory inside the default project's repo P.)
        raise StoreError(
            f"repo {label!r} is {root}, but {other} also exists and looks like the same repo; "
            "repos of the default project live directly in the data directory (only other "
            "projects P have DATA/@P/): merge the two and remove the @default one"
        )
    if not os.path.exists(root):
        hint = (f"; {other} exists: move it to {root} (repos of project P live in DATA/@P/, "
                "the default project's directly in the data directory)"
                if misplaced else
                " (create it, or pass --data DIR pointing at the directory that holds your "
                "repos)")
        raise StoreError(f"repo {label!r} not found: {root} does not exist{hint}")
    if not os.path.isdir(root):
        raise StoreError(
            f"repo {label!r} is not a directory: {root} (a repo must be a directory of files; "
            "move the file into a directory of that name)"
        )


_Item = tuple[str, "os.DirEntry[str] | None", Entry]


def _walk_sorted(repo: str, root: str,
                 top: list[_Item] | None = None) -> Iterator[Entry]:
    """Every entry below `root` (lstat, one scandir per directory) in listing order.

    Siblings are sorted by name: a name holds no "/", so that is `sort_key` order, and
    descending into a directory right after it keeps each subtree contiguous. Memory: one
    sorted directory per level of the path being walked.
    """
    stack = [iter(top if top is not None else _sorted_dir(repo, root, ""))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        _name, dir_entry, entry = item
        yield entry
        if dir_entry is not None:
            stack.append(iter(_sorted_dir(repo, dir_entry.path, entry.path)))


def _sorted_dir(repo: str, directory: str, prefix: str) -> list[_Item]:
    """The entries of one directory, stat'ed and sorted by name."""
    items: list[_Item] = []
    add = items.append
    is_dir, is_reg, is_lnk = stat.S_ISDIR, stat.S_ISREG, stat.S_ISLNK
    last_dev = -1
    for item in _list_dir(repo, directory):
        try:
            st = item.stat(follow_symlinks=False)
        except OSError as exc:
            log.warning("repo %s: skipping %s: cannot stat it (%s)", repo, item.path,
                        exc.strerror)
            continue
        mode = st.st_mode
        path = prefix + "/" + item.name
        if not (is_dir(mode) or is_reg(mode) or is_lnk(mode)):
            log.warning("repo %s: skipping %s: not a regular file, directory or symlink",
                        repo, item.path)
            continue
        link = _read_link(item.path) if is_lnk(mode) else ""
        dev = st.st_dev
        if dev == last_dev:
            dev = last_dev  # one int object for the repo's device, not one per entry
        last_dev = dev
        add((item.name, item if is_dir(mode) else None,
             Entry(path, mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid, dev,
                   st.st_ino, link)))
    items.sort(key=_by_name)
    return items


def _by_name(item: _Item) -> str:
    return item[0]


def _read_link(path: str) -> str:
    # Read once, now: /pfs answers readlink from the listing, never from the disk later.
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _list_dir(repo: str, directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except OSError as exc:
        # Skipping an unreadable directory would silently drop data from the datums.
        raise StoreError(
            f"repo {repo!r}: cannot list {directory}: {exc.strerror} (fix its permissions, "
            "or move it out of the repo)"
        ) from None
