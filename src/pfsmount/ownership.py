"""Which datum owns each committed output file, in memory, for the conflict check.

The ledger's `outputs` table is the truth; this mirrors it so that checking a finished
datum's files costs dictionary lookups instead of SQL queries that wait behind a group
commit's fsync. That is what lets a NextDatum call stage a small output on the trio thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping


def _parents(path: str) -> Iterable[str]:
    """"a/b/c" -> "a", "a/b" (proper ancestors, outermost first)."""
    end = path.find("/")
    while end != -1:
        yield path[:end]
        end = path.find("/", end + 1)


class OutputIndex:
    """Committed output files (paths relative to the output repo) and their datums."""

    def __init__(self, owners: Mapping[str, str]) -> None:
        self._owner: dict[str, str] = {}
        self._by_datum: dict[str, set[str]] = {}
        self._under: dict[str, Counter[str]] = {}  # directory -> datums with files below it
        for path, datum_id in owners.items():
            self.add(path, datum_id)

    def __contains__(self, path: str) -> bool:
        return path in self._owner

    def __len__(self) -> int:
        return len(self._owner)

    def outputs_of(self, datum_id: str) -> list[str]:
        return sorted(self._by_datum.get(datum_id, ()))

    def add(self, path: str, datum_id: str) -> None:
        previous = self._owner.get(path)
        if previous == datum_id:
            return
        if previous is not None:
            self.remove(path)
        self._owner[path] = datum_id
        self._by_datum.setdefault(datum_id, set()).add(path)
        for parent in _parents(path):
            self._under.setdefault(parent, Counter())[datum_id] += 1

    def remove(self, path: str) -> None:
        datum_id = self._owner.pop(path, None)
        if datum_id is None:
            return
        mine = self._by_datum[datum_id]
        mine.discard(path)
        if not mine:
            del self._by_datum[datum_id]
        for parent in _parents(path):
            counts = self._under[parent]
            counts[datum_id] -= 1
            if counts[datum_id] <= 0:
                del counts[datum_id]
                if not counts:
                    del self._under[parent]

    def owner(self, path: str, *, below: bool) -> str | None:
        """The datum of a file colliding with `path`: a file at `path` or at one of its
        parents, or, when `below`, a file under it (someone's directory where we want a file).
        """
        for candidate in (*_parents(path), path):
            found = self._owner.get(candidate)
            if found is not None:
                return found
        if below:
            counts = self._under.get(path)
            if counts:
                return next(iter(counts))
        return None
