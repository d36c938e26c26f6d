"""Inode numbering: views are built in threads while FUSE handlers number /pfs/out entries."""

from __future__ import annotations

import threading

from pfsmount.view import InodeAllocator


def test_inode_ranges_never_overlap_across_threads() -> None:
    inodes = InodeAllocator()
    taken: list[list[tuple[int, int]]] = [[] for _ in range(4)]

    def worker(slot: int) -> None:
        for i in range(20_000):
            n = 1 + (i % 7)
            taken[slot].append((inodes.take(n), n))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = [base + k for ranges in taken for base, n in ranges for k in range(n)]
    assert len(numbers) == len(set(numbers))
