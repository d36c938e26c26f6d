"""Writing to a bucket: what an output repo in S3 asks of it.

Uploads (multipart and in parallel for large files), conditional PUTs (`If-None-Match: *`,
the commit point of a datum), server-side copies, batch deletes, listings and small GETs.
obstore does the writes (it releases the GIL and speaks conditional PUT and multipart
upload natively); botocore lists (keys verbatim) and copies objects too big for one
CopyObject. Both use the `Bucket`'s clients, so reads and writes go as the same identity.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pfsmount.store.base import StoreError
from pfsmount.store.s3 import Bucket

__all__ = ["AlreadyExists", "BucketWriteError", "OutputBucket"]

log = logging.getLogger(__name__)

WRITE_THREADS = 16
PART_SIZE = 8 << 20  # multipart upload above this size, in parts of it
PART_CONCURRENCY = 8  # parts of one file in flight at once
MAX_SINGLE_COPY = 5 << 30  # S3's limit for one CopyObject request
DELETE_BATCH = 1000  # S3's limit for one DeleteObjects request

T = TypeVar("T")
R = TypeVar("R")


class BucketWriteError(StoreError):
    """A request to the output bucket finally failed; the message names the object."""


class AlreadyExists(Exception):
    """A create-only PUT found the key taken: someone else wrote it first."""


class OutputBucket:
    """The requests an S3 output repo makes, against one `Bucket`."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.name = bucket.location.bucket
        self._pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="s3-write")

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # ----- reads ---------------------------------------------------------------------------

    def list(self, prefix: str) -> Iterator[tuple[str, int, str]]:
        """(key, size, ETag) of every object under `prefix`, in key order."""
        try:
            paginator = self.bucket.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
                for obj in page.get("Contents", ()):
                    yield obj["Key"], obj["Size"], obj["ETag"].strip('"')
        except Exception as exc:
            raise BucketWriteError(f"listing {self.url(prefix)}: {self._why(exc)}") from None

    def get(self, key: str) -> bytes:
        import obstore

        try:
            return bytes(obstore.get(self.bucket.object_store(), key).bytes())
        except Exception as exc:
            raise BucketWriteError(f"reading {self.url(key)}: {self._why(exc)}") from None

    # ----- writes --------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, create: bool = False) -> str:
        """Write one small object; with `create`, only if `key` does not exist yet
        (`If-None-Match: *`), else AlreadyExists. Returns its ETag."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        try:
            result = obstore.put(self.bucket.object_store(), key, data,
                                 mode="create" if create else "overwrite")
        except AlreadyExistsError:
            raise AlreadyExists(self.url(key)) from None
        except Exception as exc:
            raise BucketWriteError(f"writing {self.url(key)}: {self._why(exc)}") from None
        return str(result.get("e_tag") or "").strip('"')

    def upload(self, key: str, path: str) -> None:
        """Upload the local file `path` as `key`; multipart, parts in parallel, when large."""
        import obstore

        try:
            # Never through a symlink: staging holds what user code wrote.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                obstore.put(self.bucket.object_store(), key, f, chunk_size=PART_SIZE,
                            max_concurrency=PART_CONCURRENCY)
        except OSError as exc:
            raise BucketWriteError(f"uploading {path}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise BucketWriteError(f"uploading {self.url(key)}: {self._why(exc)}") from None

    def copy(self, source: str, dest: str, size: int) -> None:
        """Server-side copy: the bytes never leave the bucket."""
        try:
            if size > MAX_SINGLE_COPY:
                # boto3's managed copy splits it into UploadPartCopy requests.
                self.bucket.client.copy({"Bucket": self.name, "Key": source}, self.name, dest)
                return
            import obstore

            obstore.copy(self.bucket.object_store(), source, dest)
        except Exception as exc:
            raise BucketWriteError(f"copying {self.url(source)} to {self.url(dest)}: "
                                   f"{self._why(exc)}") from None

    def delete(self, keys: Iterable[str]) -> None:
        """Delete `keys` (a missing key is no error), in batches."""
        import obstore

        batch = sorted(set(keys))
        try:
            for start in range(0, len(batch), DELETE_BATCH):
                obstore.delete(self.bucket.object_store(), batch[start:start + DELETE_BATCH])
        except Exception as exc:
            raise BucketWriteError(f"deleting {len(batch)} object(s) such as "
                                   f"{self.url(batch[0])}: {self._why(exc)}") from None

    def run_all(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`fn` over `items` on the write pool; every call finishes, then the first error
        (in item order) is raised."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        futures = [self._pool.submit(fn, item) for item in items]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    # ----- start-up ------------------------------------------------------------------------

    def check_writable(self, key: str) -> None:
        """Write and delete the probe `key`: StoreError, before anything mounts, when the
        output bucket cannot be written."""
        import obstore

        where = f"{self.url(key.rsplit('/', 1)[0] + '/')} (endpoint {self.bucket.endpoint})"
        try:
            obstore.put(self.bucket.object_store(), key, b"")
            obstore.delete(self.bucket.object_store(), key)
        except Exception as exc:
            raise StoreError(f"the output repo cannot be written at {where}: {self._why(exc)}; "
                             "the credentials need s3:PutObject and s3:DeleteObject on the "
                             "bucket (or pass --output-dir DIR to keep outputs locally)"
                             ) from None

    @staticmethod
    def _why(exc: Exception) -> str:
        text = str(exc)
        for code in ("AccessDenied", "Forbidden", "NoSuchBucket", "InvalidAccessKeyId",
                     "SignatureDoesNotMatch", "Connection refused", "timed out"):
            if code in text:
                return {"Forbidden": "access denied",
                        "AccessDenied": "access denied",
                        "Connection refused": "cannot reach the S3 endpoint",
                        "timed out": "the S3 endpoint did not answer",
                        "NoSuchBucket": "the bucket does not exist",
                        }.get(code, f"credentials rejected ({code})")
        first = text.splitlines()[0] if text else type(exc).__name__
        return first[:300]


def has_objects(url: str, key: str) -> bool:
    """True if the data location `url` holds an object whose key (below its prefix) starts
    with `key`: a repo or an output repo exists there (one small LIST)."""
    from pfsmount.store import s3

    bucket = s3.bucket_for(url)
    try:
        found = bucket.client.list_objects_v2(Bucket=bucket.location.bucket, MaxKeys=1,
                                              Prefix=bucket.location.prefix + key)
    except Exception as exc:
        raise StoreError(bucket.explain(exc)) from None
    return bool(found.get("KeyCount") or found.get("Contents"))


def fingerprint(url: str, key: str) -> frozenset[tuple[str, int, str]]:
    """(key, size, ETag) of every object below `key` at `url`: what `--watch` compares."""
    from pfsmount.store import s3

    bucket = s3.bucket_for(url)
    prefix = bucket.location.prefix + key
    try:
        paginator = bucket.client.get_paginator("list_objects_v2")
        return frozenset((obj["Key"], obj["Size"], obj["ETag"])
                         for page in paginator.paginate(Bucket=bucket.location.bucket,
                                                        Prefix=prefix)
                         for obj in page.get("Contents", ()))
    except Exception as exc:
        raise StoreError(bucket.explain(exc)) from None
