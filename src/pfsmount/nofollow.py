"""File operations inside a directory tree that never follow a symlink below the tree's root.

The output repo is an ordinary directory that anyone with access may have changed: a symlink
`DATA/<pipeline>/u -> /tmp/victim` must not make a commit of `u/x` write `/tmp/victim/x`.
So nothing here resolves a path below the root in one go: each directory is opened from
its parent's fd with O_NOFOLLOW | O_DIRECTORY, and files are created, renamed and removed
relative to those fds. A symlink (or a file) where a directory is needed raises `InTheWay`.
The root itself is opened normally: it is the data directory's own layout, not user data.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class InTheWay(OSError):
    """A component of a path is a symlink or a non-directory; `where` is its relative path."""

    def __init__(self, where: str) -> None:
        super().__init__(errno.ELOOP, f"{where} is a symlink or a file, not a directory")
        self.where = where


def split(rel: str) -> list[str]:
    """'a/b/c' -> ['a', 'b', 'c'], refusing anything that could leave the root."""
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"not a plain relative path: {rel!r}")
    return parts


@contextmanager
def directories(root: str, parts: Sequence[str], *, create: bool = False,
                mode: int = 0o777) -> Iterator[list[int]]:
    """Open `root` and each directory of `parts` below it: yields their fds, root first.

    Missing directories are made when `create` (with `mode`, less the umask), else
    FileNotFoundError. A component that is not a directory raises `InTheWay`.
    """
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    try:
        for i, part in enumerate(parts):
            fds.append(_open_child(fds[-1], part, "/".join(parts[:i + 1]), create, mode))
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def _open_child(parent: int, name: str, where: str, create: bool, mode: int) -> int:
    for _ in range(2):
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            # Made meanwhile, or a dangling symlink: the next open tells which.
            with suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=parent)
        except (NotADirectoryError, OSError) as exc:
            if isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP:
                raise InTheWay(where) from None
            raise
    raise InTheWay(where)


def first_symlink(root: str, parts: Sequence[str]) -> str | None:
    """The relative path of the first component of `parts` that is a symlink, if any.

    Stops quietly at the first component that does not exist (it will be created) or is
    not a directory (a file: replaced or refused by the caller's own rules).
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            try:
                st = os.lstat(part, dir_fd=fd)
            except FileNotFoundError:
                return None
            if stat.S_ISLNK(st.st_mode):
                return "/".join(parts[:i + 1])
            if not stat.S_ISDIR(st.st_mode) or i == len(parts) - 1:
                return None
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return None
    finally:
        os.close(fd)


def move_in(src_root: str, src_rel: str, dst_root: str, dst_rel: str) -> bool:
    """Rename `src_root/src_rel` to `dst_root/dst_rel`, making the destination's parents.

    An empty directory at the destination (left by a datum that changed) is replaced, a
    non-empty one raises `InTheWay`; a symlink there is replaced itself, never followed.
    Returns False when the source is gone (a redo of a rename that already happened).
    """
    src_parts, dst_parts = split(src_rel), split(dst_rel)
    with ExitStack() as stack:
        try:
            sfds = stack.enter_context(directories(src_root, src_parts[:-1]))
            os.lstat(src_parts[-1], dir_fd=sfds[-1])
        except FileNotFoundError:
            return False
        dfds = stack.enter_context(directories(dst_root, dst_parts[:-1], create=True))
        name = dst_parts[-1]
        try:
            if stat.S_ISDIR(os.lstat(name, dir_fd=dfds[-1]).st_mode):
                os.rmdir(name, dir_fd=dfds[-1])
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise InTheWay(dst_rel) from None
            raise
        os.rename(src_parts[-1], name, src_dir_fd=sfds[-1], dst_dir_fd=dfds[-1])
    return True


def remove(root: str, rel: str) -> None:
    """Delete the non-directory `root/rel`, then its parents that became empty.

    Nothing is followed: if a parent is now a symlink, what it points at is not ours and
    stays (InTheWay). A path already gone is fine (a redo).
    """
    parts = split(rel)
    try:
        with directories(root, parts[:-1]) as fds:
            with suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(parts[-1], dir_fd=fds[-1])
            for i in range(len(parts) - 2, -1, -1):
                try:
                    os.rmdir(parts[i], dir_fd=fds[i])
                except OSError:
                    break
    except FileNotFoundError:
        return


def make_dir(root: str, rel: str, mode: int) -> None:
    """Make the directory `root/rel` (and its parents) and give it `mode`."""
    with directories(root, split(rel), create=True) as fds:
        os.fchmod(fds[-1], mode)
