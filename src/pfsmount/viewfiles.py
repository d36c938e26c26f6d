"""What the datum loop asks the repo stores about one view's files.

Two questions, both about the files a datum shows: start fetching the small ones before the
datum is shown (`warm`: the next datum's files arrive while the current one runs), and
whether any of them can no longer be read as listed (`read_failure`: an object changed after
the listing fails its datum, whatever the user code made of the EIO it got).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pfsmount.store.base import Entry, RepoSource, Warming
from pfsmount.view import View

__all__ = ["WARM_BUDGET", "WARM_FILE_MAX", "ViewWarming", "read_failure", "warm"]

log = logging.getLogger(__name__)

WARM_FILE_MAX = 1 << 20  # bigger files are read ahead by their reader, when read
WARM_BUDGET = 32 << 20  # per datum: a quarter of the default memory cache


class ViewWarming:
    """The fetches started for one prepared datum; `cancel` if it will not be shown."""

    def __init__(self, parts: list[Warming]) -> None:
        self._parts = parts

    def cancel(self) -> None:
        for part in self._parts:
            part.cancel()


def _repo_files(view: View) -> Iterator[tuple[RepoSource, Entry]]:
    for node in view.nodes:
        if node.origin is not None:
            yield node.origin


def warm(view: View, file_max: int = WARM_FILE_MAX, budget: int = WARM_BUDGET) -> ViewWarming:
    """Start fetching the view's files of at most `file_max` bytes, `budget` bytes in all
    (first files first, as a walk meets them), into their stores' caches."""
    chosen: dict[int, tuple[RepoSource, list[Entry]]] = {}
    total = 0
    for repo, entry in _repo_files(view):
        if 0 < entry.size <= file_max:
            if total + entry.size > budget:
                break
            total += entry.size
            chosen.setdefault(id(repo), (repo, []))[1].append(entry)
    parts = [w for repo, entries in chosen.values() if (w := repo.warm(entries)) is not None]
    if parts:
        log.debug("fetching %d small files (%d bytes) of the next datum ahead",
                  sum(len(e) for _, e in chosen.values()), total)
    return ViewWarming(parts)


def read_failure(view: View) -> str:
    """The first reason one of the view's files could not be read as listed, or ""."""
    for repo, entry in _repo_files(view):
        reason = repo.read_failure(entry)
        if reason:
            return reason
    return ""
