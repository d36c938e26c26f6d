"""Bounded memory for the parts of the datum stream that must look at a stream twice or whole.

`Replay` lets the inner inputs of a `cross` be iterated once per outer datum: the first pass
streams and records, later passes read the record back (in memory up to `MEMORY_ITEMS`, then
from a temporary file of pickles). `KeyedSpill` holds the inputs of a `join` or `group` in a
temporary SQLite database keyed by their join/group key, so that the keys come back sorted with
the inputs of each key, however many there are: memory holds one key's inputs at a time.

Both live in the system's temporary directory and are removed when closed (or when the
process exits: the file is unlinked right after it is opened).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["KeyedSpill", "Replay"]

T = TypeVar("T")
# Below this many items a replay stays in memory (a cross of two small inputs spills nothing).
MEMORY_ITEMS = 10_000


class Replay(Generic[T]):
    """An iterable that can be iterated any number of times over a stream read only once."""

    def __init__(self, source: Iterable[T], memory_items: int = MEMORY_ITEMS) -> None:
        self._source: Iterator[T] | None = iter(source)
        self._memory: list[T] = []
        self._limit = memory_items
        self._file: io.BufferedRandom | None = None
        self._spilled = 0

    def __iter__(self) -> Iterator[T]:
        if self._source is not None:
            return self._first_pass()
        return self._replay()

    def _first_pass(self) -> Iterator[T]:
        source, self._source = self._source, None
        assert source is not None
        for item in source:
            if len(self._memory) < self._limit:
                self._memory.append(item)
            else:
                if self._file is None:
                    # Kept open across passes and closed by `close`.
                    self._file = tempfile.TemporaryFile(prefix="pfsmount-cross-")  # noqa: SIM115
                pickle.dump(item, self._file, pickle.HIGHEST_PROTOCOL)
                self._spilled += 1
            yield item
        if self._file is not None:
            self._file.flush()

    def _replay(self) -> Iterator[T]:
        yield from self._memory
        if self._file is None:
            return
        # Each pass opens its own handle: nested passes (a cross of crosses) must not share
        # a file position.
        with open(os.dup(self._file.fileno()), "rb", closefd=True) as f:
            f.seek(0)
            for _ in range(self._spilled):
                yield pickle.load(f)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_SCHEMA = """
CREATE TABLE items (
    child INTEGER NOT NULL, key BLOB NOT NULL, seq INTEGER NOT NULL, ident BLOB NOT NULL,
    outer_join INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (child, ident)
) WITHOUT ROWID;
CREATE INDEX items_by_key ON items (key, child, seq);
"""


class KeyedSpill:
    """Inputs of several children by key, on disk; keys come back in sorted order.

    An input added twice to one child is kept once, at its first place; it counts as an
    outer-join input when either addition was (`outer_join`), the rule of datums.py.
    """

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix="pfsmount-keys-", suffix=".sqlite")
        os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None)
        # Removed now: only this connection needs it, and a crash leaves nothing behind.
        os.unlink(path)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN")
        self._seq = 0
        self._batch: list[tuple[int, bytes, int, bytes, int, bytes]] = []

    def add(self, child: int, key: str, identity: Any, outer_join: bool, item: Any) -> None:
        """Keep `item` of child `child` under `key`; `identity` is what makes two items one."""
        ident = hashlib.blake2b(pickle.dumps(identity, pickle.HIGHEST_PROTOCOL),
                                digest_size=16).digest()
        self._seq += 1
        self._batch.append((child, _key_bytes(key), self._seq, ident, int(outer_join),
                            pickle.dumps(item, pickle.HIGHEST_PROTOCOL)))
        if len(self._batch) >= 4096:
            self._write()

    def _write(self) -> None:
        # The outer-join version of a repeated input replaces the first one's data, at the
        # first one's place.
        self._db.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (child, ident) DO UPDATE "
            "SET data = excluded.data, outer_join = 1 "
            "WHERE excluded.outer_join = 1 AND items.outer_join = 0", self._batch)
        self._batch.clear()

    def by_key(self, children: int) -> Iterator[tuple[str, list[list[Any]]]]:
        """(key, one list of items per child in child order), keys sorted by code point."""
        self._write()
        self._db.execute("COMMIT")
        cursor = self._db.execute("SELECT key, child, data FROM items ORDER BY key, child, seq")
        current: bytes | None = None
        groups: list[list[Any]] = []
        for key, child, data in cursor:
            if key != current:
                if current is not None:
                    yield _key_text(current), groups
                current, groups = key, [[] for _ in range(children)]
            groups[child].append(pickle.loads(data))
        if current is not None:
            yield _key_text(current), groups

    def close(self) -> None:
        self._db.close()


def _key_bytes(key: str) -> bytes:
    # UTF-8 keeps code point order under byte comparison; surrogatepass carries the lone
    # surrogates that stand for a name's non-UTF-8 bytes, in their code point place.
    return key.encode("utf-8", "surrogatepass")


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")
