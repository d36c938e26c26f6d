"""What a repo store is: one listing of a repo, and byte ranges read from its files.

A repo lives somewhere (a local directory, an S3 prefix); `RepoListing` is what the rest of
pfsmount sees of it: the entries (names, sizes, modes, a content fingerprint) taken once
when the job starts, and `open_reader`, which gives a `Reader` of one listed file. The FUSE
layer, the view builder and the datum loop use only this, so they never know which store
they serve. Listing order, subtrees and fingerprints are computed here, once for every
store, which is what makes the datums of an S3 prefix identical (ids, order) to those of a
local directory holding the same paths.
"""

from __future__ import annotations

import abc
import bisect
import hashlib
import stat
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

from pfsmount.names import FS_ENCODING, FS_ERRORS

__all__ = [
    "Entry",
    "LocalBytes",
    "Reader",
    "RepoListing",
    "RepoSource",
    "StoreError",
    "Warming",
    "digest_entries",
]

_ENTRY_RECORD = struct.Struct(">IQq")
_PATH_LENGTH = struct.Struct(">I")


class StoreError(Exception):
    """A repo that cannot be used; the message names the repo, where it is, and the fix."""


class Entry(NamedTuple):
    """One file, directory or symlink of a repo, as the listing saw it.

    A named tuple, not a dataclass: a listing makes one per file, and a tuple is built
    several times faster than a frozen dataclass (100,000-file repos).
    """

    path: str
    mode: int
    size: int
    mtime_ns: int
    uid: int = 0  # the owner /pfs shows; -1: pfsmount's own
    gid: int = 0
    dev: int = 0  # local repos: what an open must find at `path` (see RepoIndex.open_file)
    ino: int = 0
    link: str = ""  # a symlink's target, read once when listed
    # The store's own word for "these bytes" (an S3 ETag). When set it replaces the mtime in
    # the content fingerprint: an object store's mtime is upload time, not content.
    etag: str = ""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


class LocalBytes(NamedTuple):
    """Where a listed file's bytes already are on this machine, for a reader outside Python
    (the FUSE receive thread, fastpath.py): beneath the repo's `local_root` directory, never
    through a symlink.

    Either the file `path` itself, which must still be the listed one (`dev`, `ino`), or, with
    `chunk`, the files `path.0`, `path.1`, ... of `chunk` bytes each (the last one shorter),
    each written whole and never changed once there (a cache of a remote store's bytes).
    """

    path: str
    dev: int = 0
    ino: int = 0
    chunk: int = 0


class Reader(Protocol):
    """Byte ranges of one listed file, open until `close`.

    `inline` says a read is a short local syscall that may run on the FUSE (trio) thread;
    otherwise every `read` is called from a worker thread, because it may wait on the network.
    """

    inline: bool

    def read(self, offset: int, size: int) -> bytes | memoryview:
        """Up to `size` bytes from `offset`; short only at the end of the file. OSError on
        failure (EIO for a store that finally could not deliver). A memoryview may be of a
        cached buffer: use it, never write to it."""
        ...

    def close(self) -> None: ...


class Warming(Protocol):
    """Background fetches started by `RepoSource.warm`."""

    def cancel(self) -> None:
        """Abandon what has not started (the datum will not be shown)."""
        ...


def sort_key(path: str) -> str:
    # NUL sorts below every character a name can hold, so a directory's descendants come right
    # after it and before any sibling whose name merely starts with the directory's name.
    return path.replace("/", "\x00")


class RepoSource(abc.ABC):
    """A repo as an ordered stream of entries, and where each entry's bytes are.

    `walk` lists the repo in listing order (`sort_key`: a directory, then its subtree, then
    its next sibling) without holding the listing: what the datum stream needs at any size.
    `commit` is known before the walk starts (it names the repo's state in each datum's env).
    """

    name: str
    root: str  # where the repo is, for people: a directory or an s3:// URL
    commit: str

    @abc.abstractmethod
    def walk(self) -> Iterator[Entry]:
        """Every entry, the root ("/") first, in listing order; a fresh listing per call."""

    @abc.abstractmethod
    def source(self, path: str) -> str:
        """Where the bytes of the entry at `path` are, for people (a path or a URL)."""

    @abc.abstractmethod
    def open_reader(self, entry: Entry) -> Reader:
        """A reader of the listed regular file `entry`. Local stores open it now; remote ones
        fetch nothing until the first read."""

    def read_failure(self, entry: Entry) -> str:
        """Why reads of `entry` can never deliver its listed content (an object changed after
        the listing), or "": a datum that includes such a file fails with this reason."""
        return ""

    def warm(self, entries: Sequence[Entry]) -> Warming | None:
        """Start fetching these (small) files into the store's cache in the background, for a
        datum about to be shown; None when reads are local anyway. Never blocks."""
        return None

    def local_root(self) -> int:
        """A directory fd, held open by the repo, that every `local_bytes` path is beneath;
        -1 when no file's bytes are on this machine."""
        return -1

    def local_bytes(self, entry: Entry) -> LocalBytes | None:
        """Where the listed regular file `entry`'s bytes are (or will be) on this machine for a
        reader that checks what it finds there; None if nowhere."""
        return None

    def read_elsewhere(self, entry: Entry) -> None:
        """A reader outside Python read `entry` from its `local_bytes` (a cache: still used)."""
        return None  # a repo's own files need no bookkeeping


class RepoListing(RepoSource):
    """An immutable listing of one repo, with O(1) lookup and O(log n) subtrees.

    Subclasses say where the bytes are: `open_reader` and `source`.
    """

    def __init__(self, name: str, root: str, entries: list[Entry], commit: str = "") -> None:
        entries.sort(key=lambda e: sort_key(e.path))
        self.name = name
        self.root = root  # where the repo is, for people: a directory or an s3:// URL
        self.entries: Sequence[Entry] = tuple(entries)
        self._keys = [sort_key(e.path) for e in self.entries]
        self._by_path = {e.path: e for e in self.entries}
        self._fingerprints: dict[str, str] = {}
        self.commit = commit or digest_entries(self.entries, digest_size=16)

    def walk(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.root!r}, {len(self.entries)} entries)"

    def get(self, path: str) -> Entry | None:
        """The entry at `path` ("/dir/a.txt"; the root is "/"), or None."""
        return self._by_path.get(path)

    def subtree(self, path: str) -> Sequence[Entry]:
        """The entry at `path` and all its descendants, in listing order (empty if absent)."""
        if path == "/":
            return self.entries
        key = sort_key(path)
        start = bisect.bisect_left(self._keys, key)
        if start == len(self._keys) or self._keys[start] != key:
            return ()
        # Every descendant key is `key + "\x00" + ...`, so all of them sort below `key + "\x01"`.
        end = bisect.bisect_left(self._keys, key + "\x01", lo=start)
        return self.entries[start:end]

    def content_fingerprint(self, path: str) -> str:
        """A cheap fingerprint of a subtree's content (paths, modes, sizes, mtimes or ETags).

        No file is read: a rewrite changes the mtime (local) or the ETag (S3), and usually the
        size, which is what decides whether a datum must run again.
        """
        cached = self._fingerprints.get(path)
        if cached is None:
            entry = self._by_path.get(path)
            # A file is its own subtree; skip the two bisects (100k-datum listings).
            entries = (entry,) if entry is not None and not entry.is_dir else self.subtree(path)
            cached = digest_entries(entries, digest_size=32)
            self._fingerprints[path] = cached
        return cached


def digest_entries(entries: Sequence[Entry], digest_size: int = 32) -> str:
    """The content fingerprint of `entries` (a subtree in listing order): their paths, modes,
    sizes and mtimes (or ETags), never their bytes."""
    h = hashlib.blake2b(digest_size=digest_size)
    update, path_length, record = h.update, _PATH_LENGTH.pack, _ENTRY_RECORD.pack
    for path, mode, size, mtime_ns, _uid, _gid, _dev, _ino, _link, etag in entries:
        # A name's own bytes: scandir decoded them as os.fsdecode does.
        name = path.encode(FS_ENCODING, FS_ERRORS)
        # Length-prefixing each path keeps two different listings from hashing alike.
        if etag:
            tag = etag.encode()
            update(b"".join((path_length(len(name)), name, record(mode, size, 0),
                             path_length(len(tag)), tag)))
        else:
            update(b"".join((path_length(len(name)), name, record(mode, size, mtime_ns))))
    return h.hexdigest()
