"""Waiting for data to change: which of a DAG's data repos got new or changed files.

Local repos are watched with inotify (through ctypes: no dependency), one watch per
directory, added as directories appear. Where inotify is unavailable, or when asked, the
repos are polled: a listing of names, sizes, mtimes and inodes compared every interval.
Either way a change is reported once the repos have been quiet for `settle` seconds, so a
file being copied in is picked up whole, and a burst of files is one round.
"""

from __future__ import annotations

import abc
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import time
from collections.abc import Callable, Iterable, Sequence

from pfsmount.store import is_remote

log = logging.getLogger(__name__)

DEFAULT_SETTLE = 0.5  # seconds of quiet before a change is reported

_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_ISDIR = 0x40000000
_IN_ONLYDIR = 0x1000000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_MASK = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
         | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR)
_EVENT = struct.Struct("iIII")


class WatchError(Exception):
    """Watching could not start; the message says why."""


class Watcher(abc.ABC):
    """The interface both watchers share: wait until some repos changed."""

    how = ""  # how it watches, for people

    @abc.abstractmethod
    def wait(self) -> set[str]:
        """Block until at least one repo changed; the changed repo keys."""

    def close(self) -> None:  # noqa: B027 - optional hook: a poller holds nothing to release
        """Release what the watcher holds (nothing, unless a subclass says otherwise)."""


def open_watcher(data_dir: str, repos: Sequence[str], *, poll: float | None = None,
                 settle: float = DEFAULT_SETTLE) -> Watcher:
    """inotify over `repos` (keys under `data_dir`), or polling every `poll` seconds when
    asked or when inotify is unavailable."""
    if is_remote(data_dir):
        # No change notifications from a bucket: its listing is compared instead.
        from pfsmount.store.s3out import fingerprint

        return PollWatcher(data_dir, repos, interval=poll or 2.0, settle=settle,
                           snapshot=lambda repo: fingerprint(data_dir, f"{repo}/"))
    if poll is None:
        try:
            return InotifyWatcher(data_dir, repos, settle=settle)
        except WatchError as exc:
            log.warning("%s; polling the data repos every 2s instead", exc)
            poll = 2.0
    return PollWatcher(data_dir, repos, interval=poll, settle=settle)


class InotifyWatcher(Watcher):
    """inotify watches on every directory of each repo."""

    how = "inotify"

    def __init__(self, data_dir: str, repos: Sequence[str], *, settle: float) -> None:
        self.settle = settle
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise WatchError(f"inotify is unavailable ({os.strerror(ctypes.get_errno())})")
        self.fd = fd
        self._dirs: dict[int, tuple[str, str]] = {}  # watch descriptor -> (repo key, path)
        self._pending: set[str] = set()
        for repo in repos:
            self._watch_tree(repo, os.path.join(data_dir, repo))

    def _watch_tree(self, repo: str, top: str) -> None:
        for dirpath, dirnames, _ in os.walk(top):
            self._watch_dir(repo, dirpath)
            # A symlinked directory is a file to the listing: it is not followed.
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]

    def _watch_dir(self, repo: str, path: str) -> None:
        wd = self._add(self.fd, os.fsencode(path), _MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                raise WatchError(f"too many directories to watch with inotify ({path}); raise "
                                 "fs.inotify.max_user_watches, or pass --poll-interval")
            # Gone already, or not a directory: the event that told us is enough.
            return
        self._dirs[wd] = (repo, path)

    def wait(self) -> set[str]:
        changed = self._drain(timeout=None)
        while True:
            more = self._drain(timeout=self.settle)
            if not more:
                return changed
            changed |= more

    def _drain(self, timeout: float | None) -> set[str]:
        """Repos touched by the events that arrive within `timeout` (None: until one does)."""
        changed: set[str] = set()
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return changed
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return changed
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW:
                changed.update(repo for repo, _ in self._dirs.values())
                continue
            where = self._dirs.get(wd)
            if where is None:
                continue
            repo, path = where
            changed.add(repo)
            if mask & _IN_ISDIR and mask & (_IN_CREATE | _IN_MOVED_TO):
                self._watch_tree(repo, os.path.join(path, os.fsdecode(name)))
        return changed

    def close(self) -> None:
        os.close(self.fd)


class PollWatcher(Watcher):
    """Compares a listing of each repo every `interval` seconds."""

    def __init__(self, data_dir: str, repos: Sequence[str], *, interval: float,
                 settle: float, snapshot: Callable[[str], frozenset] | None = None) -> None:
        self.data_dir = data_dir
        self.repos = list(repos)
        self.interval = interval
        self.how = f"polling every {interval:g}s"
        self.settle = settle
        # A repo's listing: local files (name, size, mtime, inode), or a bucket's objects.
        self._snapshot = snapshot or (lambda repo: _snapshot(os.path.join(data_dir, repo)))
        self._seen = {repo: self._snapshot(repo) for repo in self.repos}

    def wait(self) -> set[str]:
        while True:
            time.sleep(self.interval)
            changed = self._changes()
            if changed:
                break
        while True:
            time.sleep(max(self.settle, 0.05))
            more = self._changes()
            if not more:
                return changed
            changed |= more

    def _changes(self) -> set[str]:
        changed = set()
        for repo in self.repos:
            now = self._snapshot(repo)
            if now != self._seen[repo]:
                self._seen[repo] = now
                changed.add(repo)
        return changed


def _snapshot(top: str) -> frozenset[tuple[str, int, int, int]]:
    entries: set[tuple[str, int, int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(top):
        for name in _names(dirnames, filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            entries.add((path, st.st_size, st.st_mtime_ns, st.st_ino))
    return frozenset(entries)


def _names(dirnames: Iterable[str], filenames: Iterable[str]) -> Iterable[str]:
    yield from dirnames
    yield from filenames
