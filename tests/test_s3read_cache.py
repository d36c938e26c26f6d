"""The read caches (memory, --cache-dir) and warming, kernel-free, with a recording fake bucket."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pfsmount.store.cache import LAYOUT, CacheSettings, ChunkCache, DiskCache, parse_size
from pfsmount.store.s3 import CHUNK, ObjectReader, S3Location, Warming
from support import PY, batching_spec, write_spec

MIB = 1 << 20


class FakeBucket:
    """Serves in-memory objects by key and records every ranged GET."""

    def __init__(self, objects: dict[str, bytes], disk: DiskCache | None = None,
                 cache_bytes: int = 256 * MIB) -> None:
        self.objects = objects
        self.location = S3Location("b", "")
        self.cache = ChunkCache(cache_bytes)
        self.disk = disk
        self.gets: list[tuple[str, int, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(8)
        self._warm = ThreadPoolExecutor(1)

    def fetch(self, key: str, start: int, end: int, etag: str) -> memoryview:
        self.gate.wait(10)
        with self._lock:
            self.gets.append((key, start, end))
        return memoryview(self.objects[key][start:end])

    def submit(self, fn, *args):  # type: ignore[no-untyped-def]
        return self._pool.submit(fn, *args)

    def submit_warm(self, fn, *args):  # type: ignore[no-untyped-def]
        return self._warm.submit(fn, *args)


def _body(size: int, seed: int = 0) -> bytes:
    pattern = bytes((i * 7 + seed) % 251 for i in range(251))
    return (pattern * (size // 251 + 1))[:size]


def _reader(bucket: FakeBucket, key: str, etag: str = "e1") -> ObjectReader:
    return ObjectReader(bucket, key, len(bucket.objects[key]), etag)  # type: ignore[arg-type]


def test_sizes_as_people_write_them() -> None:
    assert parse_size("2G") == 2 << 30
    assert parse_size("512M") == parse_size("512MiB") == parse_size("512 mb") == 512 << 20
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("4096") == 4096
    for bad in ("", "2X", "-1G", "G"):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)


def test_cache_size_bounds_the_directory_when_given_else_memory(tmp_path: Path) -> None:
    env = {"PFSMOUNT_S3_CACHE_MB": "64"}
    assert CacheSettings.from_options(None, None, {}) == CacheSettings(128 << 20)
    assert CacheSettings.from_options(None, None, env) == CacheSettings(64 << 20)
    assert CacheSettings.from_options(None, 1 << 30, env) == CacheSettings(1 << 30)
    s = CacheSettings.from_options(str(tmp_path), 5 << 30, env)
    assert (s.memory_bytes, s.directory, s.disk_bytes) == (64 << 20, str(tmp_path), 5 << 30)
    assert CacheSettings.from_options(str(tmp_path), None, {}).disk_bytes == 2 << 30


def test_cache_dir_serves_a_later_process_and_never_another_etag(tmp_path: Path) -> None:
    body = _body(3 * MIB + 5)
    disk = DiskCache(str(tmp_path), 64 * MIB, "scope")
    first = FakeBucket({"k": body}, disk)
    assert _reader(first, "k").read(0, len(body)) == body
    disk.flush()
    assert first.gets
    # A new process: empty memory cache, the directory found by its scan.
    later = FakeBucket({"k": body}, DiskCache(str(tmp_path), 64 * MIB, "scope"))
    assert later.disk is not None and later.disk.size == len(body)
    assert _reader(later, "k").read(0, len(body)) == body
    assert _reader(later, "k").read(MIB - 3, 10) == body[MIB - 3:MIB + 7]
    assert later.gets == []
    # The object was rewritten (new ETag): its old chunks are never served.
    changed = _body(len(body), seed=1)
    later.objects["k"] = changed
    assert _reader(later, "k", etag="e2").read(0, len(body)) == changed
    assert later.gets


def test_cache_dir_is_bounded_and_drops_damaged_chunks(tmp_path: Path) -> None:
    disk = DiskCache(str(tmp_path), 4 * MIB, "scope")
    bucket = FakeBucket({"k": _body(10 * MIB)}, disk)
    reader = _reader(bucket, "k")
    for off in range(0, 10 * MIB, MIB):
        reader.read(off, MIB)
    disk.flush()
    files = [p for p in (tmp_path / LAYOUT).rglob("*") if p.is_file()]
    assert disk.size <= 4 * MIB
    assert sum(p.stat().st_size for p in files) <= 4 * MIB
    # A truncated chunk file (a full disk, someone's hands) is a miss, not short data.
    victim = files[0]
    victim.write_bytes(b"short")
    index = int(victim.suffix[1:])
    fresh = FakeBucket({"k": bucket.objects["k"]}, disk)
    got = _reader(fresh, "k").read(index * MIB, MIB)
    assert got == bucket.objects["k"][index * MIB:(index + 1) * MIB]
    assert fresh.gets == [("k", index * MIB, (index + 1) * MIB)]


def test_concurrent_readers_of_one_cache_dir_agree(tmp_path: Path) -> None:
    objects = {f"k{i}": _body(2 * MIB + i, seed=i) for i in range(6)}
    disk = DiskCache(str(tmp_path), 8 * MIB, "scope")  # smaller than the set: evictions race
    buckets = [FakeBucket(objects, disk, cache_bytes=MIB) for _ in range(4)]

    def read_all(bucket: FakeBucket) -> bool:
        ok = True
        for _ in range(3):
            for key, body in objects.items():
                ok &= _reader(bucket, key).read(0, len(body)) == body
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(read_all, buckets))


def test_unusable_cache_dir_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as exc:
        DiskCache(str(blocker), MIB, "scope")
    assert exc.value.errno in (errno.ENOTDIR, errno.EEXIST)


def test_warming_fills_the_cache_and_a_cancelled_one_fetches_nothing() -> None:
    objects = {"a": _body(1000), "b": _body(MIB, seed=2), "c": _body(5)}
    bucket = FakeBucket(objects)
    warming = Warming([_reader(bucket, k).warm() for k in ("a", "b")])
    warming.wait()
    assert sorted(k for k, _, _ in bucket.gets) == ["a", "b"]
    before = len(bucket.gets)
    assert _reader(bucket, "a").read(0, 1000) == objects["a"]
    assert _reader(bucket, "b").read(10, MIB) == objects["b"][10:]
    assert len(bucket.gets) == before  # served from what warming fetched
    # Cancelled before its turn: nothing fetched, and a reader that waited on it still reads.
    bucket.gate.clear()
    blocker = bucket.submit_warm(lambda: bucket.gate.wait(10))
    late = Warming([_reader(bucket, "c").warm()])
    late.cancel()
    reading = bucket.submit(_reader(bucket, "c").read, 0, 5)
    bucket.gate.set()
    blocker.result()
    assert reading.result(timeout=10) == objects["c"]
    assert [k for k, _, _ in bucket.gets].count("c") == 1  # the reader's own GET, once


def test_a_chunk_straddling_read_is_exact(tmp_path: Path) -> None:
    body = _body(3 * CHUNK)
    disk = DiskCache(str(tmp_path), 64 * MIB, "s")
    bucket = FakeBucket({"k": body}, disk)
    assert _reader(bucket, "k").read(CHUNK - 1, CHUNK + 2) == body[CHUNK - 1:2 * CHUNK + 1]
    disk.flush()
    assert os.listdir(tmp_path / LAYOUT)


def test_small_object_held_whole_is_inline_and_reads_without_a_fetch() -> None:
    objects = {"small": _body(1000), "big": _body(2 * MIB)}
    bucket = FakeBucket(objects)
    cold = _reader(bucket, "small")
    assert not cold.inline  # not cached: its read may wait on the network
    Warming([_reader(bucket, "small").warm(), _reader(bucket, "big").warm()]).wait()
    fetched = len(bucket.gets)
    warm = _reader(bucket, "small")
    assert warm.inline
    bucket.cache = ChunkCache(MIB)  # even if the cache drops it now: the reader holds it
    assert warm.read(10, 100) == objects["small"][10:110]
    assert len(bucket.gets) == fetched
    assert not _reader(bucket, "big").inline  # larger than a chunk: always read in a thread


def test_cache_flags_are_checked_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "data" / "in").mkdir(parents=True)
    (tmp_path / "data" / "in" / "f").write_text("x")
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "p", {"pfs": {"repo": "in", "glob": "/*"}}, ["true"]))
    base = [PY, "-m", "pfsmount", "run", str(spec), "--data", str(tmp_path / "data"),
            "--mountpoint", str(tmp_path / "mnt")]
    local = subprocess.run([*base, "--cache-dir", str(tmp_path / "c")], capture_output=True,
                           text=True, timeout=60, check=False)
    assert local.returncode == 2, local
    assert "--cache-dir and --cache-size are for s3:// data" in local.stderr, local.stderr
    bad = subprocess.run([*base, "--cache-size", "2X"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode == 2 and "'2X' is not a size" in bad.stderr, bad.stderr
    assert not (tmp_path / "data" / ".pfsmount").exists()
