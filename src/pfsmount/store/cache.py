"""The caches of fetched object bytes: a bounded memory LRU and an optional local directory.

Both hold fixed-size chunks keyed by (object key, ETag, chunk index). The ETag is the
listing's, and every GET is conditional on it (store/s3.py), so a cached chunk is always a
piece of exactly the listed content: a changed object is never served from either cache.

`DiskCache` (`--cache-dir DIR`) keeps chunks as files, one per chunk, written to a temporary
name and renamed into place, so a reader (this process or another one sharing DIR) sees a
whole chunk or none. It survives across runs when DIR does, and evicts the least recently
used chunks once it holds more than its budget (`--cache-size`). Since a chunk file never
changes once in place, the FUSE receive thread reads cached chunks itself (fastpath.py);
`touch` tells the cache those were used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

__all__ = ["CacheSettings", "ChunkCache", "DiskCache", "parse_size"]

log = logging.getLogger(__name__)

ChunkKey = tuple[str, str, int]  # object key, ETag, chunk index

DEFAULT_MEMORY_BYTES = 128 << 20
DEFAULT_DISK_BYTES = 2 << 30
LAYOUT = "pfsmount-chunks-v1"  # a new layout gets a new name: old chunks are never misread
WRITE_BACKLOG = 64 << 20  # chunks waiting to be written; beyond this, writes are skipped
STALE_WRITE = 3600  # seconds: a temporary chunk file this old was left by a killed process

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """A size as people write it: 2G, 512M, 1.5GiB, 300MB, 4096 (bytes); powers of 1024."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size: write a number with K, M, G or T "
                         "(powers of 1024), e.g. 512M or 2G")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class CacheSettings:
    """How much to cache, and where: memory always, a local directory when `directory`."""

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    directory: str | None = None
    disk_bytes: int = DEFAULT_DISK_BYTES

    @classmethod
    def from_options(cls, cache_dir: str | None, cache_size: int | None,
                     env: dict[str, str] | os._Environ[str] = os.environ) -> CacheSettings:
        """`--cache-size` bounds the directory when `--cache-dir` is given, else the memory
        cache; PFSMOUNT_S3_CACHE_MB bounds the memory cache when `--cache-size` does not."""
        text = env.get("PFSMOUNT_S3_CACHE_MB", "")
        memory = int(text) << 20 if text.isdigit() else DEFAULT_MEMORY_BYTES
        if cache_dir is None:
            return cls(cache_size if cache_size is not None else memory)
        return cls(memory, os.path.abspath(cache_dir),
                   cache_size if cache_size is not None else DEFAULT_DISK_BYTES)


class ChunkCache:
    """A bounded LRU of fetched chunks in memory, shared by every reader of one bucket.

    Also tracks chunks being fetched, so two readers of one chunk cause one GET.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._chunks: OrderedDict[ChunkKey, memoryview] = OrderedDict()
        self._pending: dict[ChunkKey, tuple[Future, int]] = {}
        self.lock = threading.Lock()

    def get(self, k: ChunkKey) -> memoryview | tuple[Future, int] | None:
        """A cached chunk, or the pending fetch that will hold it, or None (caller holds lock)."""
        data = self._chunks.get(k)
        if data is not None:
            self._chunks.move_to_end(k)
            return data
        return self._pending.get(k)

    def __contains__(self, k: ChunkKey) -> bool:
        with self.lock:
            return k in self._chunks or k in self._pending

    def pending(self, keys: list[ChunkKey], fut: Future) -> None:
        for i, k in enumerate(keys):
            self._pending[k] = (fut, i)

    def settle(self, keys: list[ChunkKey], chunks: list[memoryview] | None) -> None:
        with self.lock:
            for i, k in enumerate(keys):
                self._pending.pop(k, None)
                if chunks is None:
                    continue
                old = self._chunks.pop(k, None)
                if old is not None:
                    self.size -= len(old)
                self._chunks[k] = chunks[i]
                self.size += len(chunks[i])
            while self.size > self.capacity and self._chunks:
                _, dropped = self._chunks.popitem(last=False)
                self.size -= len(dropped)


class DiskCache:
    """Chunks as files below DIR/pfsmount-chunks-v1, bounded by `capacity` bytes (LRU).

    Safe for the threads of one process and for several processes sharing DIR: files appear
    by rename, a chunk another process evicted is simply a miss, and every read checks the
    length it expects. The budget is kept per process (each counts what it found at start
    plus what it wrote), so processes sharing DIR may together exceed it until they restart.
    """

    def __init__(self, directory: str, capacity: int, scope: str) -> None:
        self.root = os.path.join(directory, LAYOUT)
        self.capacity = capacity
        self._scope = scope  # endpoint and bucket: the same key elsewhere is another object
        self._lock = threading.Lock()
        self._files: OrderedDict[str, int] = OrderedDict()  # path -> size, oldest first
        self.size = 0
        self._backlog = 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="s3-cache-write")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self._root_fd = -1
        self._scan()

    def _scan(self) -> None:
        found: list[tuple[float, str, int]] = []
        for sub in os.scandir(self.root):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for f in os.scandir(sub.path):
                if f.name.startswith("."):
                    # A write a killed process left half done; a young one may be another
                    # process's write in progress.
                    with contextlib.suppress(OSError):
                        if f.stat(follow_symlinks=False).st_mtime < time.time() - STALE_WRITE:
                            os.unlink(f.path)
                    continue
                with contextlib.suppress(OSError):
                    st = f.stat(follow_symlinks=False)
                    found.append((st.st_mtime, f.path, st.st_size))
        for _, path, size in sorted(found):
            self._files[path] = size
            self.size += size
        self._evict()

    def prefix(self, key: str, etag: str) -> str:
        """Where the chunks of one object are, relative to `root`: `prefix.N` is chunk N."""
        h = hashlib.sha256(f"{self._scope}\0{key}\0{etag}".encode()).hexdigest()[:40]
        return f"{h[:2]}/{h}"

    def path(self, k: ChunkKey) -> str:
        key, etag, index = k
        return os.path.join(self.root, f"{self.prefix(key, etag)}.{index}")

    def root_fd(self) -> int:
        """The cache directory, held open: readers outside Python open chunks beneath it."""
        with self._lock:
            if self._root_fd < 0:
                self._root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            return self._root_fd

    def touch(self, key: str, etag: str, chunks: int) -> None:
        """An object's chunks were read outside this cache (the receive thread): what of them
        is here is the most recently used, now and for the next run's scan."""
        prefix = os.path.join(self.root, self.prefix(key, etag))
        used = []
        with self._lock:
            for index in range(chunks):
                path = f"{prefix}.{index}"
                if path in self._files:
                    self._files.move_to_end(path)
                    used.append(path)
        if used:
            self._writer.submit(_touch_files, used)

    def get(self, k: ChunkKey, length: int) -> memoryview | None:
        """The chunk if it is here whole (exactly `length` bytes), else None."""
        path = self.path(k)
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read(length + 1)
            os.utime(path)  # recently used: the last to go, also for the next run's scan
        except OSError:
            return None
        if len(data) != length:
            log.debug("cache chunk %s has %d bytes, not %d: dropped", path, len(data), length)
            self._forget(path)
            return None
        with self._lock:
            if path in self._files:
                self._files.move_to_end(path)
        return memoryview(data)

    def put(self, k: ChunkKey, data: memoryview) -> None:
        """Write a chunk in the background; skipped (it is only a cache) when writes lag."""
        with self._lock:
            if self._backlog + len(data) > WRITE_BACKLOG:
                return
            self._backlog += len(data)
        self._writer.submit(self._write, self.path(k), data)

    def _write(self, path: str, data: memoryview) -> None:
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = os.path.join(os.path.dirname(path),
                               f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with open(fd, "wb", closefd=True) as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("could not write to the cache directory %s: %s", self.root, exc)
            return
        finally:
            with self._lock:
                self._backlog -= len(data)
        with self._lock:
            self.size -= self._files.pop(path, 0)
            self._files[path] = len(data)
            self.size += len(data)
            self._evict()

    def _evict(self) -> None:
        while self.size > self.capacity and self._files:
            path, size = self._files.popitem(last=False)
            self.size -= size
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _forget(self, path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with self._lock:
            self.size -= self._files.pop(path, 0)

    def flush(self) -> None:
        """Wait for the writes queued so far (tests, and a clean end of a run)."""
        self._writer.submit(lambda: None).result()


def _touch_files(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):  # evicted meanwhile, by us or another process
            os.utime(path)
