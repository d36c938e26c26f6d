"""Files kept open by inode, for FUSE no_open: READ, WRITE and FSYNC arrive with fh 0.

Once OPEN is answered ENOSYS the kernel stops sending OPEN and RELEASE for the rest of the
connection, so nothing tells pfsmount when a file is opened or closed. What a read or write
needs open (a store `Reader`, a staging fd) is kept here by inode instead: a bounded LRU, so
a datum of 100,000 files read once each holds at most `capacity` of them; an entry is closed
when the kernel forgets its inode, when it falls out of the LRU, or when its view or output
tree goes. An entry in use by a read on a worker thread is closed only once that read is
back, so a thread never reads a closed (or reused) fd.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

CAPACITY = 128  # files open at once per cache; each is at most one fd


@dataclass(slots=True)
class _Entry(Generic[T]):
    value: T
    owner: object  # the view or output tree the inode belongs to
    busy: int = 0  # reads in flight on worker threads
    doomed: bool = False  # dropped while busy: close when the last read is back


class OpenByInode(Generic[T]):
    """An LRU of open things keyed by inode; `close` is called exactly once per value."""

    def __init__(
        self, close: Callable[[T], None], capacity: int = CAPACITY,
        withdraw: Callable[[int], None] | None = None,
    ) -> None:
        self._close = close
        # Called with the inode as its value is dropped, before anything closes it: whoever
        # else uses the value (the FUSE receive thread) lets go of it there.
        self._withdraw = withdraw
        self._capacity = capacity
        self._entries: OrderedDict[int, _Entry[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, inode: int) -> T | None:
        entry = self._entries.get(inode)
        if entry is None:
            return None
        self._entries.move_to_end(inode)
        return entry.value

    def put(self, inode: int, value: T, owner: object) -> None:
        """Keep `value` for `inode` (replacing and closing an older one)."""
        self.drop(inode)
        self._entries[inode] = _Entry(value, owner)
        while len(self._entries) > self._capacity:
            oldest = next(iter(self._entries))
            self.drop(oldest)

    @contextmanager
    def using(self, inode: int) -> Iterator[T]:
        """The value of `inode`, kept open until the block ends even if dropped meanwhile."""
        entry = self._entries[inode]
        entry.busy += 1
        try:
            yield entry.value
        finally:
            entry.busy -= 1
            if entry.doomed and entry.busy == 0:
                self._close(entry.value)

    def drop(self, inode: int) -> None:
        """Close and forget `inode`'s value, if any (at once, or when its reads are back)."""
        entry = self._entries.pop(inode, None)
        if entry is None:
            return
        if self._withdraw is not None:
            self._withdraw(inode)
        if entry.busy:
            entry.doomed = True
        else:
            self._close(entry.value)

    def drop_owned_by(self, owner: object) -> None:
        """Drop every value of one view or output tree (it is gone, or its datum ended)."""
        for inode in [i for i, e in self._entries.items() if e.owner is owner]:
            self.drop(inode)

    def drop_all(self) -> None:
        for inode in list(self._entries):
            self.drop(inode)
