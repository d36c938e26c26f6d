"""The work every alternative in the benchmark does, shared so the comparison is like for like.

Imported by the user programs that run under `pfsmount run` (`usercode.py`) and by the same
programs run directly against the repo directory, so a direct read and a read through /pfs
execute the very same Python lines. Standard library only: it must import fast and must not
depend on pfsmount.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

READ_CHUNK = 1024 * 1024  # one read(2) of user code; the kernel splits it for FUSE


def handle_datum(in_path: str, out_dir: str) -> None:
    """The per-datum work of the overhead benchmark: read one small file, write one.

    The output holds the moment the datum was done: the spread of those moments over all
    outputs times the loop, whichever client ran it (even one killed after its last datum).
    """
    with open(in_path, "rb") as f:
        data = f.read()
    name = os.path.basename(in_path)
    with open(os.path.join(out_dir, name + ".len"), "w") as f:
        f.write(f"{len(data)} {time.time():.6f}\n")


def read_through(path: str) -> tuple[int, float]:
    """Read `path` sequentially in 1 MiB requests; return bytes read and seconds taken."""
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total, time.perf_counter() - started


def walk_and_read(root: str) -> tuple[int, int, float]:
    """os.walk `root` and read every file; return files, bytes and seconds."""
    buf = bytearray(64 * 1024)
    files = total = 0
    started = time.perf_counter()
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
            files += 1
    return files, total, time.perf_counter() - started


def evict(path: str) -> str:
    """Get `path` out of the page cache; return how ("drop_caches" or "fadvise").

    Dropping every cache is the honest cold start (it also empties FUSE's own page cache);
    without root, POSIX_FADV_DONTNEED on the source file is the next best thing.
    """
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        drop_cached_pages(path)
        return "fadvise"


def drop_cached_pages(path: str) -> None:
    """POSIX_FADV_DONTNEED: drop the cached pages of this one file (of this mount)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_result(path: str, result: Mapping[str, object]) -> None:
    """Leave a measurement for the driver, atomically (the driver may read it any time)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, path)
