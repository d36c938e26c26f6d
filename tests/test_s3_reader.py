"""ObjectReader's read-ahead and the chunk cache, kernel-free, with a recording fake bucket."""

from __future__ import annotations

import errno
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pfsmount.store.cache import ChunkCache
from pfsmount.store.s3 import CHUNK, ObjectReader, S3Location

MIB = 1 << 20


class FakeBucket:
    """Serves one in-memory object and records every ranged GET."""

    def __init__(self, body: bytes, cache_bytes: int = 256 * MIB, fail: bool = False) -> None:
        self.body = body
        self.location = S3Location("b", "")
        self.cache = ChunkCache(cache_bytes)
        self.disk = None
        self.gets: list[tuple[int, int]] = []
        self.fail = fail
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(8)

    def fetch(self, key: str, start: int, end: int, etag: str) -> bytes:
        with self._lock:
            self.gets.append((start, end))
        if self.fail:
            raise OSError(errno.EIO, "s3://b/k: read failed")
        return self.body[start:end]

    def submit(self, fn, *args):  # type: ignore[no-untyped-def]
        return self._pool.submit(fn, *args)

    submit_warm = submit

    def fetched(self) -> int:
        return sum(end - start for start, end in self.gets)


def _body(size: int) -> bytes:
    # 251 is prime, so a chunk served from the wrong offset never matches.
    pattern = bytes(range(251))
    return (pattern * (size // 251 + 1))[:size]


def test_random_read_fetches_only_its_chunks() -> None:
    body = _body(64 * MIB)
    bucket = FakeBucket(body)
    reader = ObjectReader(bucket, "k", len(body), "e")  # type: ignore[arg-type]
    assert bucket.gets == []  # opening fetches nothing
    assert reader.read(32 * MIB + 5, MIB) == body[32 * MIB + 5:33 * MIB + 5]
    assert bucket.fetched() <= 2 * MIB


def test_sequential_read_ahead_grows_in_parallel_parts() -> None:
    body = _body(96 * MIB)
    bucket = FakeBucket(body)
    reader = ObjectReader(bucket, "k", len(body), "e")  # type: ignore[arg-type]
    got = b"".join(reader.read(off, 128 * 1024) for off in range(0, len(body), 128 * 1024))
    assert got == body
    assert bucket.gets[0] == (0, CHUNK)  # a first request of one chunk
    assert max(end - start for start, end in bucket.gets) == 8 * MIB  # parts of 8 MiB
    assert bucket.fetched() == len(body)  # every byte once: read-ahead lands in the cache


def test_cache_serves_rereads_and_stays_bounded() -> None:
    body = _body(8 * MIB)
    bucket = FakeBucket(body, cache_bytes=4 * MIB)
    reader = ObjectReader(bucket, "k", len(body), "e")  # type: ignore[arg-type]
    reader.read(0, MIB)
    before = len(bucket.gets)
    assert ObjectReader(bucket, "k", len(body), "e").read(0, MIB) == body[:MIB]  # type: ignore[arg-type]
    assert len(bucket.gets) == before
    for off in range(0, len(body), MIB):
        reader.read(off, MIB)
    assert bucket.cache.size <= 4 * MIB
    # Another ETag is other content: never served from this object's chunks.
    ObjectReader(bucket, "k", len(body), "other").read(0, 10)  # type: ignore[arg-type]
    assert len(bucket.gets) > before


def test_failed_fetch_is_eio_and_retried_by_the_next_read() -> None:
    bucket = FakeBucket(_body(MIB), fail=True)
    reader = ObjectReader(bucket, "k", MIB, "e")  # type: ignore[arg-type]
    with pytest.raises(OSError) as exc:
        reader.read(0, 10)
    assert exc.value.errno == errno.EIO
    bucket.fail = False
    assert reader.read(0, 10) == bucket.body[:10]
