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

from pfsmount import _linux
from pfsmount.store.base import Entry, RepoListing, StoreError

__all__ = ["DEFAULT_PROJECT", "Entry", "RepoIndex", "StoreError", "open_repo", "repo_location"]

log = logging.getLogger(__name__)

_REPO_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
DEFAULT_PROJECT = "default"
_PROJECT_PREFIX = "@"


class RepoIndex(RepoListing):
    """An immutable listing of one repo directory; files are read with `pread` on an fd."""

    def __init__(self, name: str, root: str, entries: list[Entry], root_fd: int = -1) -> None:
        super().__init__(name, root, entries)
        # The repo directory as listed, held open: every input is opened beneath it.
        self._root_fd = root_fd

    def source(self, path: str) -> str:
        """The absolute filesystem path holding the bytes of the entry at `path`."""
        relative = path.lstrip("/")
        return os.path.join(self.root, relative) if relative else self.root

    def open_reader(self, entry: Entry) -> LocalReader:
        return LocalReader(self.open_file(entry))

    def open_file(self, entry: Entry) -> int:
        """Open the listed regular file `entry` read-only, never through a symlink.

        The path is resolved beneath the repo root without following any link; the file
        found must be the one listed (device, inode, type). Anything else (a file or a
        parent directory replaced since the listing) is EIO, with a warning naming the path.
        """
        root_fd = self._root_fd if self._root_fd >= 0 else self._open_root()
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
        listed = self._by_path.get("/")
        if listed is not None and listed.ino and (st.st_ino, st.st_dev) != (listed.ino,
                                                                             listed.dev):
            os.close(fd)
            raise self._swapped(listed, "the repo directory was replaced")
        self._root_fd = fd
        return fd


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
    check_repo_name(project, repo)
    label = repo if project == DEFAULT_PROJECT else f"{project}/{repo}"
    root = os.path.abspath(os.path.join(data_dir, repo_location(project, repo)))
    _check_repo_dir(label, root, data_dir, project, repo)
    root_fd, entries = _walk(label, root)
    if not any(not e.is_dir for e in entries):
        os.close(root_fd)
        raise StoreError(
            f"repo {label!r} is empty: {root} contains no files (Pachyderm runs no job on an "
            f"empty input commit; add the input files under {root})"
        )
    index = RepoIndex(label, root, entries, root_fd)
    log.debug("listed repo %s: %d entries, commit %s", label, len(index.entries), index.commit)
    return index


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


def _walk(repo: str, root: str) -> tuple[int, list[Entry]]:
    """lstat every entry under `root` with one scandir per directory, no recursion.

    Returns the repo directory, held open (files are later opened beneath it), and the entries.
    """
    try:
        # The repo directory itself may be a symlink to the real data; follow it at the top only.
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(root_fd)
    except OSError as exc:
        raise StoreError(f"repo {repo!r}: cannot open {root}: {exc.strerror}") from None
    entries = [Entry("/", st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid,
                     st.st_dev, st.st_ino)]
    try:
        _list_tree(repo, root, entries)
    except BaseException:
        os.close(root_fd)
        raise
    return root_fd, entries


def _list_tree(repo: str, root: str, entries: list[Entry]) -> None:
    add = entries.append
    pending = [("", root)]
    is_dir, is_reg, is_lnk = stat.S_ISDIR, stat.S_ISREG, stat.S_ISLNK
    last_dev = -1
    while pending:
        prefix, directory = pending.pop()
        for item in _list_dir(repo, directory):
            try:
                st = item.stat(follow_symlinks=False)
            except OSError as exc:
                log.warning("repo %s: skipping %s: cannot stat it (%s)", repo, item.path,
                            exc.strerror)
                continue
            mode = st.st_mode
            path = prefix + "/" + item.name
            if is_dir(mode):
                pending.append((path, item.path))
            elif not (is_reg(mode) or is_lnk(mode)):
                log.warning("repo %s: skipping %s: not a regular file, directory or symlink",
                            repo, item.path)
                continue
            link = _read_link(item.path) if is_lnk(mode) else ""
            dev = st.st_dev
            if dev == last_dev:
                dev = last_dev  # one int object for the repo's device, not one per entry
            last_dev = dev
            add(Entry(path, mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid, dev,
                      st.st_ino, link))


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
