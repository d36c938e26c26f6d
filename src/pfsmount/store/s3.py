"""Repos in an S3 bucket: `s3://BUCKET[/PREFIX]` holds repo R under the prefix `PREFIX/R/`.

Objects become files, `/` in their keys directories (an empty "dir/" marker object is a
directory too), with their true sizes; the listing is taken once, like a local repo's, and
nothing else is asked of the bucket until user code reads.

Two clients, each for what it does best (measured on loopback against SeaweedFS, 16 threads,
16 KiB ranged GETs: obstore ~1,000-1,450 GETs/s, boto3 ~380-430):
- botocore resolves endpoint, region and credentials from the standard AWS places
  (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID/..., AWS_PROFILE, shared config files, instance
  roles), checks the bucket before anything mounts, and lists: it returns keys exactly as
  stored, so a "dir/" marker stays distinguishable from an empty file "dir", which
  obstore's normalised paths are not.
- obstore (Rust, releases the GIL) does every ranged GET, with credentials handed over from
  botocore, so both always agree on who is asking.

Reads are lazy and ranged: see `ObjectReader` for sequential prefetch and `ChunkCache` for the
bounded cache that serves re-reads and files several datums share.
"""

from __future__ import annotations

import errno
import functools
import logging
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pfsmount.store.base import (
    Entry,
    LocalBytes,
    RepoListing,
    RepoSource,
    StoreError,
    digest_entries,
)
from pfsmount.store.cache import CacheSettings, ChunkCache, ChunkKey, DiskCache
from pfsmount.store.local import DEFAULT_PROJECT, check_repo_name, repo_location
from pfsmount.store.s3list import PageLister

__all__ = ["S3Location", "bucket_for", "configure_cache", "parse_location"]

log = logging.getLogger(__name__)

FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR | 0o755
CHUNK = 1 << 20  # the unit of fetching and caching; a first read fetches one (mountpoint-s3)
PART_CHUNKS = 8  # chunks per ranged GET of a prefetch: ~8 MiB parts, fetched in parallel
MAX_WINDOW_CHUNKS = 64  # a sequential reader's read-ahead grows toward 64 MiB
FETCH_THREADS = 16
WARM_THREADS = 4  # fetching the next datum's small files: a few, beside the current reads


@dataclass(frozen=True)
class S3Location:
    """A bucket and the key prefix (no leading "/", "" or ending in "/") holding the repos."""

    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_location(url: str) -> S3Location:
    """`s3://BUCKET[/PREFIX]` → its bucket and prefix; `StoreError` naming the fix otherwise."""
    rest = url[len("s3://"):] if url.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket or "//" in prefix:
        raise StoreError(f"--data {url!r} is not an S3 location: write s3://BUCKET or "
                         "s3://BUCKET/PREFIX (repo R is then the prefix PREFIX/R/)")
    return S3Location(bucket, f"{prefix}/" if prefix else "")


_settings: list[CacheSettings] = []


def configure_cache(settings: CacheSettings) -> None:
    """How the buckets this process opens from now on cache (`--cache-dir`, `--cache-size`)."""
    _settings[:] = [settings]


@functools.cache
def bucket_for(url: str) -> Bucket:
    """The one `Bucket` of a data location per process: its clients, pool and cache."""
    settings = _settings[0] if _settings else CacheSettings.from_options(None, None)
    bucket = Bucket(parse_location(url), settings)
    bucket.check()
    return bucket


class Bucket:
    """Clients, fetch pool and cache of one S3 data location."""

    def __init__(self, location: S3Location, cache: CacheSettings | None = None) -> None:
        import boto3
        import botocore.config

        self.location = location
        self._session = boto3.session.Session()
        config = botocore.config.Config(
            retries={"max_attempts": 4, "mode": "standard"},  # 5xx/throttling: backoff
            connect_timeout=5, read_timeout=30, max_pool_connections=FETCH_THREADS)
        self._client = self._session.client("s3", config=config)
        self._lister = PageLister(self._session, config, FETCH_THREADS)
        self.endpoint = self._client.meta.endpoint_url
        self.region = self._client.meta.region_name or "us-east-1"
        self._store: Any = None  # the obstore client, made at the first read
        self._store_lock = threading.Lock()
        cache = cache or CacheSettings()
        self.cache = ChunkCache(cache.memory_bytes)
        self.disk: DiskCache | None = None
        if cache.directory is not None:
            try:
                # Not the endpoint: one server is often reached by several names (a proxy,
                # localhost), and key+ETag already name the content.
                self.disk = DiskCache(cache.directory, cache.disk_bytes, location.bucket)
            except OSError as exc:
                raise StoreError(f"--cache-dir {cache.directory}: cannot use it as a cache "
                                 f"({exc.strerror or exc}); pick a writable directory") from None
        # Objects that changed (or vanished) after they were listed, with the reason: a
        # datum that read one fails naming it, whatever the user code did with the EIO.
        self.changed: dict[tuple[str, str], str] = {}
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="s3-fetch")
        self._warm_pool = _DaemonPool(WARM_THREADS, "s3-warm")

    # ----- start-up checks and listing ----------------------------------------------------

    def check(self) -> None:
        """Fail now, with the reason and the fix, if the bucket cannot be listed."""
        try:
            self._client.list_objects_v2(Bucket=self.location.bucket, MaxKeys=1,
                                         Prefix=self.location.prefix)
        except Exception as exc:
            raise StoreError(self._explain(exc)) from None

    def _explain(self, exc: Exception) -> str:
        from botocore import exceptions as bex

        where = f"{self.location.url} (endpoint {self.endpoint})"
        if isinstance(exc, bex.NoCredentialsError):
            return (f"{where}: no S3 credentials found (set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
        if isinstance(exc, bex.EndpointConnectionError | bex.ConnectTimeoutError):
            return (f"{where}: cannot reach the S3 endpoint (check AWS_ENDPOINT_URL and that "
                    "the server is running)")
        if isinstance(exc, bex.ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404"):
                return f"{where}: bucket {self.location.bucket!r} does not exist (create it, " \
                       "or fix the bucket name in --data)"
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                        "ExpiredToken"):
                return (f"{where}: the S3 credentials were rejected ({code}); check "
                        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
            if code in ("AccessDenied", "403"):
                return (f"{where}: access denied listing the bucket; the credentials need "
                        "s3:ListBucket and s3:GetObject on it")
            return f"{where}: {code or 'error'}: {exc}"
        return f"{where}: {exc}"

    def open_repo(self, repo: str, project: str = DEFAULT_PROJECT) -> S3Repo:
        """List repo `repo` of `project` once; `StoreError` if it has no files."""
        check_repo_name(project, repo)
        label = repo if project == DEFAULT_PROJECT else f"{project}/{repo}"
        prefix = f"{self.location.prefix}{repo_location(project, repo)}/"
        url = f"s3://{self.location.bucket}/{prefix}"
        try:
            objects = list(self._list(prefix))
        except Exception as exc:
            raise StoreError(f"repo {label!r}: {self._explain(exc)}") from None
        entries = _entries(label, url, objects)
        if not any(e.is_file for e in entries):
            what = "holds no objects" if len(entries) <= 1 else "holds no files"
            raise StoreError(f"repo {label!r} not found or empty: {url} {what} (upload the "
                             f"input files under that prefix, or fix --data)")
        listing = S3Repo(label, url, entries, self, prefix)
        log.debug("listed repo %s: %d entries from %s", label, len(entries), url)
        return listing

    def open_stream(self, repo: str, project: str = DEFAULT_PROJECT) -> S3Stream:
        """Open repo `repo` of `project` for a streamed listing; `StoreError` if it has no
        files. Lists its top level now (the commit) and walks only to the first file."""
        check_repo_name(project, repo)
        label = repo if project == DEFAULT_PROJECT else f"{project}/{repo}"
        prefix = f"{self.location.prefix}{repo_location(project, repo)}/"
        url = f"s3://{self.location.bucket}/{prefix}"
        try:
            top, mtime = self.list_level(label, url, prefix, "")
            stream = S3Stream(label, url, self, prefix, top, mtime)
            if not any(e.is_file for e in stream.walk()):
                raise StoreError(f"repo {label!r} not found or empty: {url} holds no files "
                                 "(upload the input files under that prefix, or fix --data)")
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"repo {label!r}: {self._explain(exc)}") from None
        return stream

    def list_level(self, label: str, url: str, key_prefix: str, path: str
               ) -> tuple[list[tuple[str, Entry | None]], int]:
        """One directory's children, sorted by name: (name, its entry, or None for a
        directory not listed yet), and the directory's mtime (its marker's, else its newest
        object's, else 0)."""
        files: dict[str, Entry] = {}
        dirs: set[str] = set()
        marker = 0
        for page in self._lister.pages(self.location.bucket, key_prefix, "/"):
            for obj in page.get("Contents", ()):
                name = obj["Key"][len(key_prefix):]
                if not name:
                    marker = _ns(obj["LastModified"])  # the directory's own "dir/" marker
                elif name in (".", ".."):
                    log.warning("repo %s: skipping %s%s: a key with an empty, '.' or '..' "
                                "part is no file path", label, url, (path + "/" + name)[1:])
                else:
                    files[name] = Entry(f"{path}/{name}", FILE_MODE, obj["Size"],
                                        _ns(obj["LastModified"]), -1, -1, etag=obj["ETag"])
            for common in page.get("CommonPrefixes", ()):
                name = common["Prefix"][len(key_prefix):-1]
                if name in ("", ".", ".."):
                    log.warning("repo %s: skipping %s%s/...: a key with an empty, '.' or '..' "
                                "part is no file path", label, url, (path + "/" + name)[1:])
                else:
                    dirs.add(name)
        for name in sorted(dirs & files.keys()):
            log.warning("repo %s: skipping object %s%s: its name is also a directory", label,
                        url, (path + "/" + name)[1:])
            del files[name]
        items: list[tuple[str, Entry | None]] = [(n, None) for n in dirs]
        items += files.items()
        items.sort(key=_by_name)
        newest = max((e.mtime_ns for e in files.values()), default=0)
        return items, marker or newest

    def _list(self, prefix: str):
        for page in self._lister.pages(self.location.bucket, prefix):
            for obj in page.get("Contents", ()):
                yield obj["Key"][len(prefix):], obj["Size"], obj["ETag"], obj["LastModified"]

    # ----- ranged reads -------------------------------------------------------------------

    def _obstore(self) -> Any:
        with self._store_lock:
            if self._store is None:
                from obstore.store import S3Store

                self._store = S3Store(
                    self.location.bucket, endpoint=self.endpoint, region=self.region,
                    credential_provider=self._credentials,
                    client_options={"allow_http": True, "connect_timeout": "5s",
                                    "timeout": "60s"},
                    retry_config={"max_retries": 4, "retry_timeout": timedelta(seconds=30),
                                  "backoff": {"init_backoff": timedelta(milliseconds=100),
                                              "max_backoff": timedelta(seconds=4),
                                              "base": 2}})
            return self._store

    def _credentials(self) -> dict[str, Any]:
        creds = self._session.get_credentials()
        if creds is None:
            raise PermissionError("no S3 credentials found")
        frozen = creds.get_frozen_credentials()
        # Asked again every few minutes, so botocore's refreshing credentials stay fresh.
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token,
                "expires_at": datetime.now(UTC) + timedelta(minutes=5)}

    def fetch(self, key: str, start: int, end: int, etag: str) -> memoryview:
        """Bytes [start, end) of object `key` as listed with `etag`: OSError(EIO) naming the
        object on failure, and when the object is no longer the listed one."""
        import obstore
        from obstore.exceptions import NotFoundError, PreconditionError

        url = f"s3://{self.location.bucket}/{key}"
        try:
            # If-Match: bytes of any other version are refused by the server, so a file's
            # pieces can never come from two versions of it.
            got = obstore.get(self._obstore(), key,
                              options={"range": (start, end), "if_match": etag or None})
            returned = got.meta.get("e_tag")
            # A view of obstore's own buffer: slicing it into chunks copies nothing.
            data = memoryview(got.bytes())
        except (PreconditionError, NotFoundError) as exc:
            now = "was deleted" if isinstance(exc, NotFoundError) else "was overwritten"
            raise self._changed(key, etag, f"{url} {now} after the repo was listed") from None
        except Exception as exc:
            log.error("reading %s bytes %d-%d failed: %s", url, start, end - 1,
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise OSError(errno.EIO, f"{url}: read failed") from None
        if etag and returned and returned != etag:
            # A server that ignores If-Match still says which version it sent.
            raise self._changed(key, etag, f"{url} was overwritten after the repo was listed "
                                           f"(ETag {etag} listed, {returned} served)")
        return data

    def _changed(self, key: str, etag: str, reason: str) -> OSError:
        if (key, etag) not in self.changed:
            log.error("%s: reads of it fail (EIO) and so does the datum; run the job again "
                      "to read the new content", reason)
        self.changed[(key, etag)] = reason
        return OSError(errno.EIO, reason)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def submit_warm(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Background work that must not delay the reads of the datum running now."""
        return self._warm_pool.submit(fn, *args)

    # ----- what an output repo in the bucket (store/s3out.py) shares ----------------------

    @property
    def client(self) -> Any:
        """The botocore client (listing, and copies too big for one request)."""
        return self._client

    def object_store(self) -> Any:
        """The obstore client (uploads, conditional PUTs, copies, deletes)."""
        return self._obstore()

    def explain(self, exc: Exception) -> str:
        """A failed request, in words that name the bucket and the fix."""
        return self._explain(exc)


def _entries(label: str, url: str, objects: list[tuple[str, int, str, datetime]]) -> list[Entry]:
    """Entries of one repo prefix: files, marker directories, and every implied parent."""
    newest = max((o[3] for o in objects), default=None)
    root_mtime = _ns(newest) if newest else time.time_ns()
    entries: dict[str, Entry] = {"/": Entry("/", DIR_MODE, 0, root_mtime, -1, -1)}
    files: list[tuple[str, int, str, int]] = []
    for rel, size, etag, modified in objects:
        marker = rel.endswith("/")
        parts = rel.rstrip("/").split("/") if rel.strip("/") else []
        if not parts:
            continue  # the repo prefix's own marker
        if any(p in ("", ".", "..") for p in parts):
            log.warning("repo %s: skipping %s%s: a key with an empty, '.' or '..' part is no "
                        "file path", label, url, rel)
            continue
        mtime = _ns(modified)
        for i in range(1, len(parts) + (1 if marker else 0)):
            path = "/" + "/".join(parts[:i])
            if path not in entries:
                entries[path] = Entry(path, DIR_MODE, 0, mtime, -1, -1)
        if not marker:
            files.append(("/" + "/".join(parts), size, etag, mtime))
    for path, size, etag, mtime in files:
        if path in entries:
            log.warning("repo %s: skipping object %s%s: its name is also a directory", label,
                        url, path.lstrip("/"))
            continue
        entries[path] = Entry(path, FILE_MODE, size, mtime, -1, -1, etag=etag)
    return list(entries.values())


def _by_name(item: tuple[str, Entry | None]) -> str:
    return item[0]


def _ns(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000_000)


class _DaemonPool:
    """Threads for fetching ahead. Daemons, unlike ThreadPoolExecutor's: the process must
    never wait at exit for bytes of a datum that will not run (the server may be gone)."""

    def __init__(self, threads: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple]] = \
            queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        self._queue.put((fut, fn, args))
        return fut

    def _work(self) -> None:
        while True:
            fut, fn, args = self._queue.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)


class _ObjectFiles:
    """Where a repo prefix's files are and how they are read (ranged GETs, warmed ahead):
    what `S3Repo` (listed once) and `S3Stream` (listed as walked) share."""

    bucket: Bucket
    root: str
    _prefix: str

    def source(self, path: str) -> str:
        return self.root + path.lstrip("/")

    def _key(self, entry: Entry) -> str:
        return self._prefix + entry.path.lstrip("/")

    def open_reader(self, entry: Entry) -> ObjectReader:
        # Nothing is fetched: opening a file must not cost a round trip.
        return ObjectReader(self.bucket, self._key(entry), entry.size, entry.etag)

    def local_root(self) -> int:
        disk = self.bucket.disk
        return disk.root_fd() if disk is not None else -1

    def local_bytes(self, entry: Entry) -> LocalBytes | None:
        # The object's chunks in --cache-dir, once fetched; keyed by the listed ETag, so what
        # is there is the listed content.
        disk = self.bucket.disk
        if disk is None:
            return None
        return LocalBytes(disk.prefix(self._key(entry), entry.etag), chunk=CHUNK)

    def read_elsewhere(self, entry: Entry) -> None:
        if self.bucket.disk is not None:
            self.bucket.disk.touch(self._key(entry), entry.etag,
                                   (entry.size + CHUNK - 1) // CHUNK)

    def read_failure(self, entry: Entry) -> str:
        if not self.bucket.changed:
            return ""
        return self.bucket.changed.get((self._key(entry), entry.etag), "")

    def warm(self, entries: Sequence[Entry]) -> Warming:
        # Never more than a quarter of the memory cache: warming must not evict what the
        # datum running now is reading.
        budget, parts = self.bucket.cache.capacity // 4, []
        for entry in entries:
            budget -= entry.size
            if budget < 0:
                break
            parts.append(self.open_reader(entry).warm())
        return Warming(parts)


class S3Repo(_ObjectFiles, RepoListing):
    """One repo prefix of a bucket, listed once; files are read in ranged GETs."""

    def __init__(self, name: str, root: str, entries: list[Entry], bucket: Bucket,
                 prefix: str) -> None:
        super().__init__(name, root, entries)
        self.bucket = bucket
        self._prefix = prefix


class S3Stream(_ObjectFiles, RepoSource):
    """One repo prefix of a bucket, listed as it is walked: one delimited listing per
    directory (sorted by name, so the order is a local repo's), nothing held but the levels
    of the current path. Files are read in ranged GETs, as `S3Repo`'s."""

    def __init__(self, name: str, root: str, bucket: Bucket, prefix: str,
                 top: list[tuple[str, Entry | None]], mtime: int) -> None:
        self.name = name
        self.root = root
        self.bucket = bucket
        self._prefix = prefix
        self._top = top
        self._root_entry = Entry("/", DIR_MODE, 0, mtime, -1, -1)
        # Known before the walk: the top level's names, and its objects' sizes and ETags.
        self.commit = digest_entries(
            [self._root_entry, *(e if e is not None else Entry("/" + n, DIR_MODE, 0, 0)
                                 for n, e in top)], digest_size=16)

    def __repr__(self) -> str:
        return f"S3Stream({self.name!r}, {self.root!r})"

    def walk(self) -> Iterator[Entry]:
        yield self._root_entry
        stack = [(iter(self._top), "", self._root_entry.mtime_ns)]
        while stack:
            items, path, parent_mtime = stack[-1]
            item = next(items, None)
            if item is None:
                stack.pop()
                continue
            name, entry = item
            if entry is not None:
                yield entry
                continue
            child = f"{path}/{name}"
            level, mtime = self.bucket.list_level(self.name, self.root,
                                                  f"{self._prefix}{child[1:]}/", child)
            # A directory with neither marker nor objects of its own shows its parent's time.
            yield Entry(child, DIR_MODE, 0, mtime or parent_mtime, -1, -1)
            stack.append((iter(level), child, mtime or parent_mtime))


class Warming:
    """Small files being fetched into the cache ahead of their datum (`S3Repo.warm`).

    `cancel` abandons what has not started: a reader waiting for it then fetches it itself.
    """

    def __init__(self, parts: list[list[tuple[Future, threading.Event]]]) -> None:
        self._parts = [p for part in parts for p in part]

    def cancel(self) -> None:
        # Not Future.cancel: a fetch that never runs would leave its chunks pending forever.
        # An abandoned one settles them as missing when its turn comes, which is at once.
        for _, abandoned in self._parts:
            abandoned.set()

    def wait(self) -> None:
        """Until every fetch has ended (tests)."""
        for fut, _ in self._parts:
            if not fut.cancelled():
                fut.exception()


class ObjectReader:
    """Reads of one object, with sequential read-ahead (a `Reader`, see store/base.py).

    A read fetches the 1 MiB chunks it touches. A read that continues where the last one
    ended, into a new chunk, doubles the read-ahead window (1 MiB, 2, 4, ... 64 MiB), fetched
    as ~8 MiB ranged GETs in parallel on the bucket's pool; any other read resets it, so a
    1 MiB read in the middle of a large object costs about 1-2 MiB of transfer. Chunks come
    from the memory cache, then the cache directory, then the network (If-Match the ETag).
    """

    def __init__(self, bucket: Bucket, key: str, size: int, etag: str) -> None:
        self._bucket = bucket
        self._key = key
        self._size = size
        self._etag = etag
        self._last_chunks = (size + CHUNK - 1) // CHUNK
        self._next = 0  # where a sequential reader reads next
        self._chunk = -1  # the chunk the last read started in
        self._window = 1
        self._ahead = 0  # chunks below this one have been asked for by this reader
        self._held: memoryview | None = None  # a small object's whole content, once cached

    @property
    def inline(self) -> bool:
        """True once this reader holds all of its object (a small one, found whole in the
        memory cache, e.g. fetched ahead with its datum): its reads then never wait, so the
        FUSE layer may serve them, and prime the page cache at OPEN, on its own thread."""
        if self._held is None and 0 < self._size <= CHUNK:
            cache = self._bucket.cache
            with cache.lock:
                got = cache.get((self._key, self._etag, 0))
            if isinstance(got, memoryview) and len(got) == self._size:
                self._held = got
        return self._held is not None or self._size == 0

    def read(self, offset: int, size: int) -> bytes | memoryview:
        end = min(offset + size, self._size)
        if offset >= end:
            return b""
        if self._held is not None:
            return self._held[offset:end]
        first, last = offset // CHUNK, (end - 1) // CHUNK
        if offset == self._next and first != self._chunk and offset > 0:
            self._window = min(self._window * 2, MAX_WINDOW_CHUNKS)
        elif offset != self._next:
            self._window, self._ahead = 1, 0
        self._next, self._chunk = end, first
        ahead = last
        # Top the read-ahead up as soon as a whole part fits in the window again (half the
        # window while it is small): at every chunk would cost one 1 MiB GET per chunk instead
        # of ~8 MiB parts, and waiting for half the window to drain left as few as 4 parts
        # in flight (measured through FUSE, 1 GiB first read: ~1.3x faster this way).
        if self._ahead - first <= max(self._window - PART_CHUNKS, self._window // 2):
            ahead = max(last, first + self._window - 1)
        ahead = min(ahead, self._last_chunks - 1)
        self._ahead = max(self._ahead, ahead + 1)
        while True:
            waits = self._request(first, ahead, need=last, submit=self._bucket.submit)
            chunks = [_resolve(got) for got in waits]
            if all(c is not None for c in chunks):
                break
            ahead = last  # a warming fetch was abandoned: ask again for what is missing
        if first == last:
            # A view of the cached chunk, not a copy: FUSE sends it straight from there (the
            # kernel asks in whole 1 MiB chunks; measured ~7 % less CPU per GiB).
            return chunks[0][offset - first * CHUNK:end - first * CHUNK]
        parts = []
        for index, data in zip(range(first, last + 1), chunks, strict=True):
            lo = offset - index * CHUNK if index == first else 0
            hi = end - index * CHUNK if index == last else CHUNK
            parts.append(data[lo:hi])
        return b"".join(parts)

    def warm(self) -> list[tuple[Future, threading.Event]]:
        """Start fetching the whole (small) object into the cache, on the warming pool."""
        if self._size == 0:
            return []
        started: list[tuple[Future, threading.Event]] = []

        def submit(fn: Callable[..., Any], *args: Any) -> Future:
            abandoned = threading.Event()
            fut = self._bucket.submit_warm(fn, *args, abandoned)
            started.append((fut, abandoned))
            return fut

        self._request(0, self._last_chunks - 1, need=-1, submit=submit)
        return started

    def _request(self, first: int, ahead: int, need: int,
                 submit: Callable[..., Future]) -> list[memoryview | tuple[Future, int]]:
        """Start fetches of the missing chunks first..ahead; what holds first..need."""
        cache = self._bucket.cache
        held: list[memoryview | tuple[Future, int]] = []
        missing: list[int] = []
        with cache.lock:
            for index in range(first, ahead + 1):
                got = cache.get((self._key, self._etag, index))
                if got is None:
                    missing.append(index)
                elif index <= need:
                    held.append(got)
            # Contiguous runs of missing chunks, cut into parts of PART_CHUNKS.
            runs: list[list[int]] = []
            for index in missing:
                if runs and runs[-1][-1] == index - 1 and len(runs[-1]) < PART_CHUNKS:
                    runs[-1].append(index)
                else:
                    runs.append([index])
            started: dict[int, tuple[Future, int]] = {}
            for run in runs:
                keys = [(self._key, self._etag, i) for i in run]
                fut = submit(self._fetch_part, run[0], run[-1], keys)
                cache.pending(keys, fut)
                for j, i in enumerate(run):
                    started[i] = (fut, j)
        # Put the held and started chunks back in order.
        result: list[memoryview | tuple[Future, int]] = []
        it = iter(held)
        for index in range(first, need + 1):
            result.append(started[index] if index in started else next(it))
        return result

    def _fetch_part(self, first: int, last: int, keys: list[ChunkKey],
                    abandoned: threading.Event | None = None) -> list[memoryview] | None:
        cache = self._bucket.cache
        if abandoned is not None and abandoned.is_set():
            cache.settle(keys, None)
            return None
        try:
            chunks = self._from_disk(first, last, keys)
            if None in chunks:
                chunks = self._from_network(first, last, keys, chunks)
        except BaseException:
            cache.settle(keys, None)  # a later read tries again
            raise
        cache.settle(keys, chunks)
        return chunks

    def _from_disk(self, first: int, last: int,
                   keys: list[ChunkKey]) -> list[memoryview | None]:
        disk = self._bucket.disk
        if disk is None:
            return [None] * len(keys)
        return [disk.get(k, min(CHUNK, self._size - i * CHUNK))
                for i, k in zip(range(first, last + 1), keys, strict=True)]

    def _from_network(self, first: int, last: int, keys: list[ChunkKey],
                      chunks: list[memoryview | None]) -> list[memoryview]:
        # One GET for the span from the first chunk missing to the last one.
        lo = next(i for i, c in enumerate(chunks) if c is None)
        hi = max(i for i, c in enumerate(chunks) if c is None)
        start, end = (first + lo) * CHUNK, min((first + hi + 1) * CHUNK, self._size)
        data = self._bucket.fetch(self._key, start, end, self._etag)
        if len(data) != end - start:
            reason = (f"s3://{self._bucket.location.bucket}/{self._key}: got {len(data)} bytes "
                      f"for {start}-{end - 1}: the object changed after it was listed")
            log.error("%s", reason)
            raise OSError(errno.EIO, reason)
        disk = self._bucket.disk
        for j in range(lo, hi + 1):
            piece = data[(j - lo) * CHUNK:(j - lo + 1) * CHUNK]
            chunks[j] = piece
            if disk is not None:
                disk.put(keys[j], piece)
        return chunks  # type: ignore[return-value]

    def close(self) -> None:
        return None


def _resolve(got: memoryview | tuple[Future, int]) -> memoryview | None:
    if not isinstance(got, tuple):
        return got
    fut, i = got
    try:
        chunks = fut.result()
    except CancelledError:
        return None
    return None if chunks is None else chunks[i]
